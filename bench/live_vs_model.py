"""The cost model held against the live system on this box: broker, expert hub and edge as separate
processes, the Fashion-MNIST test split at Edge-Only (tau 0: every frame kept), co-inference at
each --taus and all-offloaded (tau 1): per tau, mean latency per frame (capture -> final label)
of a stream paced at --fps, and throughput of an unpaced one (--throughput-frames), beside what
evaluation.costmodel predicts from a profile, with the ratio live / model.

    python bench/live_vs_model.py --profile profiles/NAME.json [--pack packs/fashion-mnist]
        [--taus 0.5,0.8,0.9] [--frames 2000] [--fps 100] [--throughput-frames 2000] [--batch 1]
        [--backend auto] [--threads 1]

Predictions, with alpha the run's own measured offload proportion and B --batch (the edge's
micro-batch: 1 at a pace the edge keeps up with):
  mean latency per frame = T_E(B) + alpha T_N(B alpha)  (a kept frame waits for the edge only)
  T_exec(B)              = T_E(B) + T_N(B alpha)        (the paper's batch latency, section 4.2)
  throughput             = 1000 B / T_exec(B) frames/s  (edge and hub one after the other)
The model leaves out MQTT, the broker, queueing and the gate: the per-source latency parts
printed with each run show where live time beyond the model went. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

from askexpert.datasets import load_dataset
from askexpert.localbroker import Broker, edge_args, edge_summary, hub_args, spawn_edge, spawn_quiet
from askexpert.log import setup_logging
from askexpert.settings import CommonSettings
from askexpert.subscriber import LabelSubscriber, wait_online
from evaluation.costmodel import Profile
from evaluation.score import score


def predict(edge: Profile, near: Profile, edge_model: str, near_model: str, alpha: float, batch: int) -> dict:
    t_e, t_n = edge.latency_ms(edge_model, batch), near.latency_ms(near_model, batch * alpha)
    t_exec = t_e + t_n
    return {"mean_latency_ms": t_e + alpha * t_n, "T_exec_ms": t_exec, "fps": 1000 * batch / t_exec}


def live_run(settings: CommonSettings, pack: str, tau: float, frames: int, opts: list[str], node: str) -> dict:
    """One edge over `frames` test frames at `tau`; its labels scored."""
    consumer = LabelSubscriber(settings, node).start()
    try:
        summary = edge_summary(spawn_edge(*edge_args(pack, settings.broker, node, frames, *opts, "--tau", repr(tau))))
        consumer.wait(frames, idle_timeout=5.0)
        with consumer.changed:
            labels = [m for m in consumer.labels if m.node == node]
    finally:
        consumer.stop()
    rep = score(labels, load_dataset("fashion-mnist", "test").labels, expected=range(frames))
    return {
        "frames": frames,
        "alpha": rep.alpha,
        "mean_latency_ms": rep.latency_ms["mean"],
        "p50_latency_ms": rep.latency_ms["p50"],
        "fps": rep.fps,
        "missing": rep.missing,
        "fallbacks": rep.fallbacks,
        "edge_summary": {k: summary[k] for k in ("edge", "expert", "fallback", "dropped")},
        "by_source": {
            src: {
                "frames": r.frames,
                "mean_latency_ms": round(r.latency_ms["mean"], 3),
                "parts_p50_ms": {part: round(s["p50"], 3) for part, s in r.latency_parts_ms.items()},
            }
            for src, r in rep.by_source.items()
            if r.frames
        },
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="the profile of this box (bench/profile_device.py): edge and near-edge")
    ap.add_argument("--near-profile", default=None, help="a different near-edge profile (default: --profile)")
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--taus", default="0.5,0.8,0.9", help="co-inference taus (tau 0 and tau 1 are always run)")
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--fps", type=float, default=100.0, help="pace of the latency run")
    ap.add_argument("--throughput-frames", type=int, default=None, help="frames of the unpaced run (default --frames; 0: none)")
    ap.add_argument("--batch", type=int, default=1, help="B of the prediction: the edge's micro-batch at this pace")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="inference threads of the edge and of the hub")
    ap.add_argument("--expert-form", default="auto", help="auto (the pack's served form) | full | compact: what the hub serves")
    ap.add_argument("--deadline-ms", type=float, default=1000.0)
    a = ap.parse_args(argv)
    setup_logging("warning")  # stdout is the JSON line

    from askexpert.models import shape_name
    from askexpert.pack import Pack

    m = Pack.load(a.pack).manifest
    edge_p = Profile.load(a.profile)
    near_p = Profile.load(a.near_profile or a.profile)
    form = Pack.load(a.pack).resolve_form(a.expert_form)
    served = Pack.load(a.pack).expert_entries(form)[0]
    edge_model = shape_name(m.generalist.arch)
    near_model = f"{shape_name(served.arch)} {'expert' if served.kind == 'vit' else 'compact expert'}"
    taus = [0.0, *sorted(float(t) for t in a.taus.split(",") if t.strip()), 1.0]
    model = ["--backend", a.backend, "--threads", str(a.threads)]
    broker = Broker().start()
    settings = CommonSettings(broker=broker.url)
    hub = spawn_quiet("expert_hub.cli", *hub_args(a.pack, broker.url, "live-hub", *model, "--expert-form", form))
    runs = []
    try:
        wait_online(settings, "hub", "live-hub", timeout=300)
        edge_opts = [*model, "--deadline-ms", repr(a.deadline_ms)]
        n_unpaced = a.frames if a.throughput_frames is None else a.throughput_frames
        for i, tau in enumerate(taus):
            paced = live_run(settings, a.pack, tau, a.frames, [*edge_opts, "--fps", repr(a.fps)], f"live-{i}")
            unpaced = live_run(settings, a.pack, tau, n_unpaced, [*edge_opts, "--fps", "0"], f"live-{i}-unpaced") if n_unpaced else None
            pred = predict(edge_p, near_p, edge_model, near_model, paced["alpha"], a.batch)
            runs.append(
                {
                    "tau": tau,
                    "paced": paced,
                    "unpaced": unpaced,
                    "model": {k: round(v, 3) for k, v in pred.items()},
                    "live_over_model": {
                        "mean_latency": round(paced["mean_latency_ms"] / pred["mean_latency_ms"], 3),
                        "fps": round(unpaced["fps"] / pred["fps"], 3) if unpaced and unpaced["fps"] else None,
                    },
                }
            )
    finally:
        hub.terminate()
        hub.wait(10)
        broker.stop()
    out = {
        "bench": "live_vs_model",
        "pack": m.name,
        "frames": a.frames,
        "fps": a.fps,
        "batch": a.batch,
        "backend": a.backend,
        "threads": a.threads,
        "expert_form": form,
        "models": {"edge": edge_model, "near_edge": near_model},
        "profile": {k: edge_p.meta.get(k) for k in ("device", "backend", "precision", "threads", "source")},
        "runs": runs,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
