"""Edge throughput on a dataset source: the live pipeline next to the raw generalist loop.

For each precision (same backend, threads and batch size for both), alternating, --repeats times:
- raw: the generalist alone, in this process, batches of --batch (the ceiling);
- edge: `edge-node run` at tau 0 (nothing offloaded): source, gate, one MQTT label per frame.
Medians are reported, with pipeline_vs_raw = edge / raw, and fast_vs_fp32 = raw at each precision /
raw at fp32. Then, with --system-tau, the whole system (edge + expert hub on this machine) once at
the last precision. Prints one JSON line.

    python bench/edge_throughput.py --frames 5000 --precisions fp32,bf16
    python bench/edge_throughput.py --backend onnx --precisions fp32,int8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from askexpert.backends import open_backend
from askexpert.datasets import load_dataset
from askexpert.hardware import default_threads
from askexpert.localbroker import Broker, edge_args, edge_summary, hub_args, spawn_edge, spawn_quiet
from askexpert.pack import Pack
from askexpert.settings import CommonSettings
from askexpert.subscriber import wait_online


def raw_loop(pack: Pack, images: np.ndarray, batch: int, backend: str, threads: int, precision: str) -> float:
    clf = open_backend(backend, threads=threads, precision=precision).classifier(pack, pack.manifest.generalist)
    clf(images[:batch])  # warm up
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        clf(images[i : i + batch])
    return len(images) / (time.perf_counter() - t0)


def edge_fps(a: argparse.Namespace, broker: Broker, node: str, tau: float, precision: str) -> dict:
    opts = ["--backend", a.backend, "--precision", precision, "--threads", str(a.threads), "--batch-size", str(a.batch)]
    summary = edge_summary(spawn_edge(*edge_args(a.pack, broker.url, node, a.frames, "--tau", repr(tau), *opts)))
    return {**summary, "fps": summary["frames"] / summary["elapsed_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=32, help="the raw loop's batch and the edge's --batch-size")
    ap.add_argument("--backend", default="torch", help="torch | onnx (auto would hide which one ran)")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated; the first is the reference (fp32)")
    ap.add_argument("--threads", type=int, default=0, help="inference threads, raw and edge alike (0: auto, half the cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--system-tau", type=float, default=None, help="also run edge + hub at this tau (last precision)")
    a = ap.parse_args()
    pack = Pack.load(a.pack)
    images = load_dataset("fashion-mnist", "test").images[: a.frames]
    precisions = a.precisions.split(",")
    broker = Broker().start()
    out: dict = {
        "bench": "edge_throughput",
        "frames": a.frames,
        "backend": a.backend,
        "batch": a.batch,
        "threads": a.threads or default_threads(),
        "repeats": a.repeats,
        "precisions": precisions,
    }
    try:
        runs: dict[str, dict[str, list[float]]] = {p: {"raw": [], "edge": []} for p in precisions}
        for r in range(a.repeats):  # alternating, so that a busy moment does not land on one side only
            for p in precisions:
                runs[p]["raw"].append(raw_loop(pack, images, a.batch, a.backend, a.threads, p))
                runs[p]["edge"].append(edge_fps(a, broker, f"bench-{p}-{r}", 0.0, p)["fps"])
        ref = statistics.median(runs[precisions[0]]["raw"])
        for p in precisions:
            raw, edge = statistics.median(runs[p]["raw"]), statistics.median(runs[p]["edge"])
            out[p] = {
                "raw_fps": round(raw, 1),
                "edge_fps": round(edge, 1),
                "pipeline_vs_raw": round(edge / raw, 3),
                f"raw_vs_{precisions[0]}": round(raw / ref, 2),
                "raw_runs": [round(x, 1) for x in runs[p]["raw"]],
                "edge_runs": [round(x, 1) for x in runs[p]["edge"]],
            }
        if a.system_tau is not None:
            p = precisions[-1]
            hub = spawn_quiet("expert_hub.cli", *hub_args(a.pack, broker.url, "bench-hub", "--backend", a.backend, "--precision", p))
            try:
                wait_online(CommonSettings(broker=broker.url), "hub", "bench-hub")
                system = edge_fps(a, broker, "bench-system", a.system_tau, p)
            finally:
                hub.terminate()
                hub.wait(10)
            out["system"] = {
                "precision": p,
                "tau": a.system_tau,
                "fps": round(system["fps"], 1),
                "offloaded": system["expert"] + system["fallback"],
                "fallbacks": system["fallback"],
            }
    finally:
        broker.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
