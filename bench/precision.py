"""Raw model loops per precision (torch: fp32, bf16; onnx: fp32, int8): speed and top-1 agreement with fp32.

Prints one JSON line: for the generalist and for the experts (each frame to its routed expert, as
the hub runs them), images per second and top-1 accuracy at each precision, and the share of
frames whose top-1 equals fp32's. `bf16` runs only where the CPU has native bf16 (else fp32).

    python bench/precision.py --pack packs/fashion-mnist --frames 10000 --threads 2
    python bench/precision.py --backend onnx --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from askexpert.backends import open_backend
from askexpert.datasets import load_dataset
from askexpert.hardware import default_threads
from askexpert.pack import Pack
from askexpert.routing import decide


def timed(fn, images: np.ndarray, batch: int, *extra) -> tuple[np.ndarray, float]:
    """Logits of all images in batches, and images per second (after one warm-up batch)."""
    fn(images[:batch], *(e[:batch] for e in extra))
    t0 = time.perf_counter()
    out = [fn(images[i : i + batch], *(e[i : i + batch] for e in extra)) for i in range(0, len(images), batch)]
    return np.concatenate(out), len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    ap.add_argument("--precisions", default=None, help="default: fp32,bf16 (torch) or fp32,int8 (onnx)")
    a = ap.parse_args()
    pack = Pack.load(a.pack)
    data = load_dataset("fashion-mnist", "test")
    images, y = data.images[: a.frames], data.labels[: a.frames]
    out: dict = {
        "device": f"{platform.machine()} {a.device}, {a.threads or default_threads()} threads",
        "backend": a.backend,
        "batch": a.batch,
    }
    ref: dict[str, np.ndarray] = {}
    keys = None  # every precision's experts get the frames the first one routed, so they compare
    for precision in (a.precisions or {"torch": "fp32,bf16", "onnx": "fp32,int8"}[a.backend]).split(","):
        be = open_backend(a.backend, a.device, a.threads, precision)
        logits, fps = timed(be.classifier(pack, pack.manifest.generalist), images, a.batch)
        if keys is None:
            keys = np.asarray(decide(logits, pack.manifest.partition, pack.manifest.k).expert, dtype=object)
        experts = be.experts(pack, pack.manifest.experts)
        e_logits, e_fps = timed(lambda im, k, lib=experts: lib(im, list(k)), images, a.batch, keys)
        for name, lg, speed in (("generalist", logits, fps), ("experts", e_logits, e_fps)):
            top1 = lg.argmax(1)
            row = {"ran": be.precision, "img_s": round(speed, 1), "top1_pct": round(100 * float((top1 == y).mean()), 2)}
            if name in ref:
                row["agreement_with_fp32_pct"] = round(100 * float((top1 == ref[name]).mean()), 3)
                row["speedup"] = round(speed / out[name]["fp32"]["img_s"], 2)
            else:
                ref[name] = top1
            out.setdefault(name, {})[precision] = row
    print(json.dumps(out))


if __name__ == "__main__":
    main()
