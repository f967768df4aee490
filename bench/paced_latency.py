"""Latency at a rate the system keeps up with: broker, expert hub and edge on this machine, the
Fashion-MNIST test split paced at --fps, every final label collected by a consumer.

Prints one JSON line: per label source (edge, expert, edge-fallback) the count and latency
p50/p99/max (capture -> final label, measured at the edge), where the time went (p50/p99 of each
part the labels carry), and missing / duplicate labels. Thread counts per process and the
precision are arguments, so that an edge and a hub sharing the cores can be measured both ways.

    python bench/paced_latency.py --fps 200 --frames 2000 --tau 0.8
    python bench/paced_latency.py --backend onnx --edge-threads 1 --hub-threads 1
"""

from __future__ import annotations

import argparse
import json

from askexpert.datasets import load_dataset
from askexpert.localbroker import Broker, edge_args, edge_summary, hub_args, spawn_edge, spawn_quiet
from askexpert.settings import CommonSettings
from askexpert.subscriber import LabelSubscriber, wait_online
from evaluation.score import score


def rounded(stats: dict) -> dict:
    return {k: round(stats[k], 2) for k in ("n", "p50", "p99", "max") if k in stats}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--fps", type=float, default=200.0)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--tau", type=float, default=0.8)
    ap.add_argument("--deadline-ms", type=float, default=1000.0)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--edge-threads", type=int, default=0, help="0: the library's default (one per core)")
    ap.add_argument("--hub-threads", type=int, default=0)
    a = ap.parse_args(argv)
    model = ["--backend", a.backend, "--precision", a.precision]
    broker = Broker().start()
    settings = CommonSettings(broker=broker.url)
    hub = spawn_quiet("expert_hub.cli", *hub_args(a.pack, broker.url, "paced-hub", *model, "--threads", str(a.hub_threads)))
    consumer = None
    try:
        wait_online(settings, "hub", "paced-hub", timeout=300)
        consumer = LabelSubscriber(settings, "paced").start()
        edge_opts = [
            *model,
            "--threads",
            str(a.edge_threads),
            "--fps",
            repr(a.fps),
            "--tau",
            repr(a.tau),
            "--deadline-ms",
            repr(a.deadline_ms),
        ]
        summary = edge_summary(spawn_edge(*edge_args(a.pack, broker.url, "paced", a.frames, *edge_opts)))
        consumer.wait(a.frames, idle_timeout=5.0)
        with consumer.changed:
            labels = list(consumer.labels)
    finally:
        if consumer is not None:
            consumer.stop()
        hub.terminate()
        hub.wait(10)
        broker.stop()
    rep = score(labels, load_dataset("fashion-mnist", "test").labels, expected=range(a.frames))
    out = {
        "bench": "paced_latency",
        "fps": a.fps,
        "frames": a.frames,
        "tau": a.tau,
        "backend": a.backend,
        "precision": a.precision,
        "edge_threads": a.edge_threads,
        "hub_threads": a.hub_threads,
        "missing": rep.missing,
        "duplicates": rep.duplicates,
        "alpha": round(rep.alpha, 4),
        "accuracy": round(rep.accuracy, 4),
        "achieved_fps": round(rep.fps, 1),
        "edge_summary": {k: summary[k] for k in ("edge", "expert", "fallback", "dropped")},
        "latency_ms": rounded(rep.latency_ms),
        "by_source": {
            src: {
                "latency_ms": rounded(r.latency_ms),
                "parts_p50_p99_ms": {part: [round(s["p50"], 2), round(s["p99"], 2)] for part, s in r.latency_parts_ms.items()},
            }
            for src, r in rep.by_source.items()
            if r.frames
        },
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
