"""A fleet at about twice what its hubs can answer, with a fixed tau and with adaptive tau.

Calibration: one edge offloads every frame (tau 1) as fast as it can; the hubs' capacity C is
then what they report in their load messages (frames answered per second of work: what the
adaptive edges follow too), and the edge confidences of those frames give the share alpha
offloaded at --tau. Then each edge is paced at overload * C / (edges * alpha) frames/s, once per
mode: `fixed` (tau fixed, deadlines carried in the frames), `fixed-no-deadline` (tau fixed, frames
without their deadline, as edges before it: the hub keeps only the MQTT expiry, whole seconds),
`adaptive` (tau_min..tau). Prints one JSON line with, per mode: fallbacks (% of frames), the share
of offloads answered in time (`deadline_met_pct`), the offloaded share alpha, accuracy on the
Fashion-MNIST test split, the effective tau (mean, min), labels per second, missing and duplicate
labels, and the frames the hubs dropped as too late (`hub_expired`, from their stats).

    python bench/overload.py --pack packs/fashion-mnist --edges 2 --frames 2000
    python bench/overload.py --frames 50 --expert-ms 20    # a slower hub (bench/slow_hub.py)
    python bench/overload.py --modes fixed-no-deadline,fixed --expert-ms 10   # deadlines in the frame, before/after
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from askexpert.datasets import load_dataset
from askexpert.localbroker import Broker, edge_args, edge_summary, hub_args, spawn_edge
from askexpert.protocol import HubLoad, LabelMsg, decode_hub_load, decode_label, hub_load_filter, stats_topic
from askexpert.settings import CommonSettings
from askexpert.subscriber import Subscriber, wait_online

HERE = Path(__file__).parent
MODES = {  # mode -> the edges' extra flags
    "fixed": ["--tau-mode", "fixed"],
    "fixed-no-deadline": ["--tau-mode", "fixed", "--no-frame-deadline"],
    "adaptive": ["--tau-mode", "adaptive"],
}


def run_edges(
    a: argparse.Namespace, broker: Broker, consumer: Subscriber, name: str, n: int, fps: float | None, tau: float, extra: list[str]
) -> list[LabelMsg]:
    """Run the edges to the end of their frames; return their labels as the consumer saw them."""
    with consumer.changed:
        consumer.raw.clear()
    pace = ["--fps", repr(fps)] if fps else []
    opts = ["--tau", repr(tau), "--deadline-ms", repr(a.deadline_ms), *pace, *extra]
    edges = [spawn_edge(*edge_args(a.pack, broker.url, f"{name}{i}", n, *opts)) for i in range(a.edges if fps else 1)]
    for e in edges:
        edge_summary(e)
    time.sleep(0.5)  # the last labels on their way to the consumer
    with consumer.changed:
        return [decode_label(payload) for _, payload in consumer.raw]


def idle_hubs(broker: Broker, hubs: int, timeout: float = 30.0) -> list[HubLoad]:
    """The hubs' loads once every hub has reported an empty queue: each mode starts from idle hubs,
    not behind the frames the previous mode left queued (the hub serves a frame until its MQTT
    expiry, whole seconds, past the edge's own deadline)."""
    time.sleep(1.5)  # a load period after the previous run's (the default interval is 1 s)
    loads = Subscriber(CommonSettings(broker=broker.url), hub_load_filter("ate/v1")).start()
    try:
        latest: dict[str, HubLoad] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with loads.changed:
                loads.changed.wait(0.2)
                latest.update((ld.hub, ld) for ld in (decode_hub_load(p) for _, p in loads.raw if p))
            if len(latest) >= hubs and all(ld.queue == 0 for ld in latest.values()):
                return list(latest.values())
    finally:
        loads.stop()
    raise TimeoutError(f"hubs not idle within {timeout:.0f} s: {latest}")


def hub_expired(broker: Broker, hubs: int, timeout: float = 10.0) -> int:
    """Frames the hubs have dropped as too late so far, from their next stats messages."""
    stats = Subscriber(CommonSettings(broker=broker.url), stats_topic("ate/v1", "hub", "+")).start()
    try:
        latest: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while len(latest) < hubs and time.monotonic() < deadline:
            with stats.changed:
                stats.changed.wait(0.2)
                latest.update((m["hub"], m["expired"]) for m in (json.loads(p) for _, p in stats.raw if p))
        return sum(latest.values())
    finally:
        stats.stop()


def fallbacks_by_second(labels: list) -> list[int]:
    """Fallbacks per second of the run (by capture time): a start-up transient, or a steady state."""
    if not labels:
        return []
    t0 = min(m.t_capture for m in labels)
    counts = Counter(int(m.t_capture - t0) for m in labels if m.source == "edge-fallback")
    return [counts.get(i, 0) for i in range(int(max(m.t_capture for m in labels) - t0) + 1)]


def report(labels: list, expected: int, truth: np.ndarray) -> dict:
    per_frame = Counter((m.node, m.frame_id) for m in labels)
    sources = Counter(m.source for m in labels)
    published = [m.t_capture + m.latency_ms / 1000 for m in labels]
    taus = np.array([m.tau for m in labels], dtype=float)
    answered = [m.latency_ms for m in labels if m.source == "expert"]
    offloaded = sources["expert"] + sources["edge-fallback"]
    n = max(len(labels), 1)
    return {
        "frames": expected,
        "missing": expected - len(per_frame),
        "duplicates": sum(c - 1 for c in per_frame.values() if c > 1),
        "fallback_pct": round(100 * sources["edge-fallback"] / n, 2),
        "alpha": round((sources["expert"] + sources["edge-fallback"]) / n, 4),
        "accuracy": round(float(np.mean([m.label == truth[m.frame_id] for m in labels])), 4) if labels else None,
        "expert_latency_p99_ms": round(float(np.percentile(answered, 99)), 1) if answered else None,
        "deadline_met_pct": round(100 * (1 - sources["edge-fallback"] / offloaded), 2) if offloaded else None,
        "fallbacks_by_second": fallbacks_by_second(labels),
        "tau_effective_mean": round(float(taus.mean()), 4) if labels else None,
        "tau_effective_min": round(float(taus.min()), 4) if labels else None,
        "labels_per_s": round(len(labels) / max(max(published) - min(published), 1e-3), 1) if labels else 0.0,
        "sources": dict(sources),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/overload.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", default="packs/fashion-mnist")
    p.add_argument("--edges", type=int, default=2)
    p.add_argument("--hubs", type=int, default=1)
    p.add_argument("--frames", type=int, default=1000, help="frames per edge and mode")
    p.add_argument("--calibrate-frames", type=int, default=None, help="frames of the calibration run (default --frames)")
    p.add_argument("--overload", type=float, default=2.0, help="offered offloads / hub capacity")
    p.add_argument("--tau", type=float, default=0.8)
    p.add_argument("--tau-min", type=float, default=0.0)
    p.add_argument("--deadline-ms", type=float, default=500.0)
    p.add_argument("--expert-ms", type=float, default=0.0, help="make each expert frame take at least this long (a slower hub)")
    p.add_argument("--modes", default="fixed,adaptive", help=f"comma-separated, from {', '.join(MODES)}")
    a = p.parse_args(argv)
    if unknown := set(a.modes.split(",")) - set(MODES):
        p.error(f"unknown modes {sorted(unknown)}")

    truth = load_dataset("fashion-mnist", "test").labels
    broker = Broker().start()
    slow = [str(HERE / "slow_hub.py"), repr(a.expert_ms / 1000)] if a.expert_ms else ["-m", "expert_hub.cli"]
    hubs = [
        subprocess.Popen(
            [sys.executable, *slow, *hub_args(a.pack, broker.url, f"ovl-hub{i}", "--share-group", "ovl", "--stats-interval-s", "1")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(a.hubs)
    ]
    consumer = None
    try:
        for i in range(a.hubs):
            wait_online(CommonSettings(broker=broker.url), "hub", f"ovl-hub{i}", timeout=600)
        consumer = Subscriber(CommonSettings(broker=broker.url), "ate/v1/nodes/+/labels").start()
        cal = run_edges(a, broker, consumer, "ovl-cal", a.calibrate_frames or a.frames, None, 1.0, [])
        capacity = sum(ld.capacity or 0.0 for ld in idle_hubs(broker, a.hubs))
        alpha = float(np.mean([m.edge_conf < a.tau for m in cal])) if cal else 0.0
        if capacity <= 0 or alpha <= 0:
            raise SystemExit(f"calibration failed: capacity {capacity:.1f}/s, alpha at tau {a.tau} = {alpha:.3f}")
        fps = a.overload * capacity / (a.edges * alpha)
        modes = {}
        for mode in a.modes.split(","):
            idle_hubs(broker, a.hubs)
            expired = hub_expired(broker, a.hubs)
            labels = run_edges(a, broker, consumer, f"ovl-{mode}", a.frames, fps, a.tau, [*MODES[mode], "--tau-min", repr(a.tau_min)])
            modes[mode] = report(labels, a.edges * a.frames, truth)
            idle_hubs(broker, a.hubs)
            modes[mode]["hub_expired"] = hub_expired(broker, a.hubs) - expired
    finally:
        if consumer is not None:
            consumer.stop()
        for h in hubs:
            h.terminate()
            h.wait(10)
        broker.stop()
    print(
        json.dumps(
            {
                "bench": "overload",
                "pack": str(Path(a.pack)),
                "edges": a.edges,
                "hubs": a.hubs,
                "tau": a.tau,
                "tau_min": a.tau_min,
                "deadline_ms": a.deadline_ms,
                "expert_ms": a.expert_ms,
                "hub_capacity_per_s": round(capacity, 1),
                "alpha_at_tau": round(alpha, 4),
                "fps_per_edge": round(fps, 1),
                "offered_offloads_per_s": round(fps * a.edges * alpha, 1),
                **modes,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
