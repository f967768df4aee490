"""What a little Python beside inference costs it: the hub's raw expert loop alone, then with a
thread that runs pure Python for a few tens of microseconds at a time (as paho's network thread
does for each message), in the same process.

ONNX Runtime releases the GIL while it computes, and takes it back after every call; the expert
library makes one call per expert of a batch. Prints one JSON line: frames/s of the loop (best and
worst of --repeats) alone and beside each duty cycle (busy us, asleep us).

    python bench/gil_contention.py
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from askexpert.backends import open_backend
from askexpert.datasets import load_dataset
from askexpert.hardware import cpu_name
from askexpert.pack import Pack
from askexpert.routing import decide

DUTY = [(0, 0), (40, 560), (40, 160), (200, 800)]  # (busy us, asleep us): 0 = the loop alone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--frames", type=int, default=6400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    pack = Pack.load(a.pack)
    images = load_dataset("fashion-mnist", "test").images[: a.frames]
    backend = open_backend("onnx", threads=1)
    keys = [
        str(k) for k in decide(backend.classifier(pack, pack.manifest.generalist)(images), pack.manifest.partition, pack.manifest.k).expert
    ]
    library = backend.experts(pack, pack.manifest.experts)

    def rate() -> float:
        library(images[: a.batch], keys[: a.batch])
        t0 = time.perf_counter()
        for i in range(0, len(images), a.batch):
            library(images[i : i + a.batch], keys[i : i + a.batch])
        return len(images) / (time.perf_counter() - t0)

    stop = threading.Event()

    def python_work(busy_us: float, asleep_us: float) -> None:
        while not stop.is_set():
            until, n = time.perf_counter() + busy_us / 1e6, 0
            while time.perf_counter() < until:
                n += 1
            time.sleep(asleep_us / 1e6)

    out: dict = {"bench": "gil_contention", "cpu": cpu_name(), "batch": a.batch, "experts": len(library.keys), "fps": {}}
    for busy, asleep in DUTY:
        stop.clear()
        worker = threading.Thread(target=python_work, args=(busy, asleep)) if busy else None
        if worker:
            worker.start()
        runs = [rate() for _ in range(a.repeats)]
        stop.set()
        if worker:
            worker.join()
        out["fps"]["alone" if not busy else f"python {busy} us / {asleep} us"] = {"best": round(max(runs)), "worst": round(min(runs))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
