"""Render a data set split into a recording (lossless video + sidecar with true labels).

    python -m trainer.render fashion-mnist test recordings/fmnist-test [--fps 30] [--max-frames N]

Frame i is sample i of the split; its timestamp is start + i / fps, so `replay:DIR` plays it at
`fps` by default. Colour data sets are stored BGR (OpenCV's order, as a camera would give them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2

from askexpert.datasets import load_dataset
from askexpert.recording import Recording, RecordingWriter


def render_dataset(name: str, split: str, out_dir: str | Path, *, fps: float = 30.0, max_frames: int | None = None,
                   start: float | None = None) -> dict:  # fmt: skip
    """Write the split (or its first max_frames samples) as a recording; returns the meta."""
    data = load_dataset(name, split)
    n = len(data) if max_frames is None else min(len(data), max_frames)
    t0 = time.time() if start is None else start
    with RecordingWriter(out_dir, fps=fps, classes=list(data.classes), source=f"dataset:{name}:{split}") as w:
        for i in range(n):
            image = data.images[i]
            if image.shape[2] == 3:
                image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            w.write(image, t0 + i / fps, int(data.labels[i]))

    return Recording(out_dir).meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.render", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="data set name, e.g. fashion-mnist")
    p.add_argument("split", help="train or test")
    p.add_argument("out", help="new recording folder")
    p.add_argument("--fps", type=float, default=30.0, help="nominal frame rate (default 30)")
    p.add_argument("--max-frames", type=int, default=None)
    a = p.parse_args(argv)
    meta = render_dataset(a.dataset, a.split, a.out, fps=a.fps, max_frames=a.max_frames)
    print(f"{a.out}: {meta['frames']} frames {meta['width']}x{meta['height']}x{meta['channels']} "
          f"{meta['codec']} at {meta['fps']} fps")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
