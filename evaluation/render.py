"""Render a data set split into a recording (lossless video + sidecar with true labels), so that a
data set replays through the live system like any recorded camera.

    python -m evaluation render fashion-mnist test recordings/fmnist-test [--fps 30] [--max-frames N]

Frame i is sample i of the split; its timestamp is start + i / fps, so `replay:DIR` plays it at
`fps` by default. Colour data sets are stored BGR (OpenCV's order, as a camera would give them).
"""

from __future__ import annotations

import argparse
import time
from itertools import islice
from pathlib import Path

from askexpert.datasets import load_dataset
from askexpert.frames import dataset_frames
from askexpert.recording import Recording, RecordingWriter


def render_dataset(
    name: str,
    split: str,
    out_dir: str | Path,
    *,
    fps: float = 30.0,
    max_frames: int | None = None,
    start: float | None = None,
) -> dict:
    """Write the split (or its first max_frames samples) as a recording; returns the meta."""
    data = load_dataset(name, split)
    t0 = time.time() if start is None else start
    with RecordingWriter(out_dir, fps=fps, classes=list(data.classes), source=f"dataset:{name}:{split}") as w:
        for i, image, label in islice(dataset_frames(data), max_frames):
            w.write(image, t0 + i / fps, label)
    return Recording(out_dir).meta


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="write a data set split as a recording (replay:DIR), labels in its sidecar")
    p.add_argument("dataset", help="data set name, e.g. fashion-mnist")
    p.add_argument("split", help="train or test")
    p.add_argument("out", help="new recording folder")
    p.add_argument("--fps", type=float, default=30.0, help="nominal frame rate (default 30)")
    p.add_argument("--max-frames", type=int, default=None)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Render and say what was written."""
    meta = render_dataset(a.dataset, a.split, a.out, fps=a.fps, max_frames=a.max_frames)
    print(f"{a.out}: {meta['frames']} frames {meta['width']}x{meta['height']}x{meta['channels']} {meta['codec']} at {meta['fps']} fps")
    return 0
