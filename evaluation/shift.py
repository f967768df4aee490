"""How hard `askexpert.shift`'s camera is on a pack's edge model: the severity rule and its measure.

    python -m evaluation shift calibrate [--pack packs/fashion-mnist]   # the rule, on the collect stream
    python -m evaluation shift measure   [--pack packs/fashion-mnist]   # clean test against the scoring stream

Both print one JSON line; `calibrate` is how `askexpert.shift.SEVERITY` was chosen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from askexpert import shift
from askexpert.datasets import load_shifted_fashion_mnist, shifted_fashion_mnist_clean
from evaluation import REFERENCE_PACK


def edge_top1(pack_dir: str | Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 (%) of a pack's edge generalist, run as the edge runs it (torch backend, CPU)."""
    from askexpert.backends import open_backend
    from askexpert.pack import Pack

    pack = Pack.load(pack_dir)
    clf = open_backend("torch", "cpu").classifier(pack, pack.manifest.generalist)
    logits = np.concatenate([clf(images[i : i + 512]) for i in range(0, len(images), 512)])
    return round(100.0 * float((logits.argmax(1) == labels).mean()), 2)


def calibrate(pack_dir: str | Path) -> dict:
    """The smallest severity of the grid costing the 3H CALIBRATION_DROP_PT on the collect stream."""
    clean = shifted_fashion_mnist_clean("collect")
    base = edge_top1(pack_dir, clean.images, clean.labels)
    tried: dict[str, float] = {}
    for s in shift.GRID:  # the smallest that qualifies: stop there
        tried[str(s)] = edge_top1(pack_dir, shift.shift_images(clean.images, "collect", s), clean.labels)
        if base - tried[str(s)] >= shift.CALIBRATION_DROP_PT:
            return {
                "stream": "collect",
                "clean_top1": base,
                "shifted_top1": tried,
                "rule_drop_pt": shift.CALIBRATION_DROP_PT,
                "severity": s,
            }
    raise RuntimeError(f"no severity of {shift.GRID} costs the edge model {shift.CALIBRATION_DROP_PT} pt on the collect stream: {tried}")


def measure(pack_dir: str | Path) -> dict:
    """The edge model's top-1 on the clean test split against the shifted scoring stream."""
    clean, shifted = shifted_fashion_mnist_clean("score"), load_shifted_fashion_mnist("score")
    a, b = edge_top1(pack_dir, clean.images, clean.labels), edge_top1(pack_dir, shifted.images, shifted.labels)
    return {"severity": shift.SEVERITY, "clean_test_top1": a, "shifted_score_top1": b, "drop_pt": round(a - b, 2)}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shift", help="the camera-like shift's severity rule (calibrate) and its cost on the scoring stream (measure)")
    p.add_argument("what", choices=["calibrate", "measure"])
    p.add_argument("--pack", default=str(REFERENCE_PACK))
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    print(json.dumps((calibrate if a.what == "calibrate" else measure)(a.pack)))
    return 0
