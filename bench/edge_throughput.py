"""Edge throughput on a dataset source: the live pipeline next to the raw generalist loop.

Prints one JSON line:
- raw_generalist_fps: the generalist alone, in-process, batches of --batch (the ceiling);
- edge_only_fps: `edge-node run` with tau 0 (nothing offloaded): source, gate, MQTT labels;
- system_fps: `edge-node run` at the pack's tau with the expert hub on the same machine.

    python bench/edge_throughput.py --pack packs/fashion-mnist --frames 3000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import numpy as np
import torch

from askexpert.backends import open_backend
from askexpert.datasets import load_dataset
from askexpert.localbroker import Broker, spawn
from askexpert.pack import Pack
from askexpert.settings import CommonSettings
from askexpert.subscriber import wait_online


def raw_loop(pack: Pack, images: np.ndarray, batch: int, backend: str) -> float:
    clf = open_backend(backend).classifier(pack, pack.manifest.generalist)
    clf(images[:batch])  # warm up
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        clf(images[i : i + batch])
    return len(images) / (time.perf_counter() - t0)


def edge_run(pack_dir: str, broker: Broker, frames: int, tau: float | None, backend: str) -> dict:
    args = [
        "run",
        "--pack",
        pack_dir,
        "--broker",
        broker.url,
        "--node-id",
        "bench",
        "--backend",
        backend,
        "--source",
        "dataset:fashion-mnist:test",
        "--max-frames",
        str(frames),
        "--stats-interval-s",
        "0",
    ]
    if tau is not None:
        args += ["--tau", str(tau)]
    out = spawn("edge_node.cli", *args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout, _ = out.communicate(timeout=900)
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["fps"] = round(summary["frames"] / summary["elapsed_s"], 1)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--backend", default="torch")
    a = ap.parse_args()
    pack = Pack.load(a.pack)
    images = load_dataset("fashion-mnist", "test").images[: a.frames]
    raw = raw_loop(pack, images, a.batch, a.backend)
    broker = Broker().start()
    hub = spawn(
        "expert_hub.cli",
        "run",
        "--pack",
        a.pack,
        "--broker",
        broker.url,
        "--hub-id",
        "bench-hub",
        "--backend",
        a.backend,
        "--stats-interval-s",
        "0",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_online(CommonSettings(broker=broker.url), "hub", "bench-hub")
        edge_only = edge_run(a.pack, broker, a.frames, 0.0, a.backend)
        system = edge_run(a.pack, broker, a.frames, None, a.backend)
    finally:
        hub.terminate()
        hub.wait(10)
        broker.stop()
    print(
        json.dumps(
            {
                "bench": "edge_throughput",
                "frames": a.frames,
                "backend": a.backend,
                "torch_threads": torch.get_num_threads(),
                "raw_generalist_fps": round(raw, 1),
                "edge_only_fps": edge_only["fps"],
                "system_fps": system["fps"],
                "system_tau": pack.manifest.tau,
                "system_offloaded": system["expert"] + system["fallback"],
                "system_fallbacks": system["fallback"],
                "pipeline_vs_raw": round(edge_only["fps"] / raw, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
