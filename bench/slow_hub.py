"""A real expert hub whose expert library takes at least SECONDS per frame: a hub with a small,
known capacity (a slower accelerator), for overload runs (bench/overload.py, tests) on a machine
whose edges cannot outrun its own hub.

    python bench/slow_hub.py 0.025 run --pack PACK --broker URL ...   (then `expert-hub`'s arguments)
"""

from __future__ import annotations

import sys
import time

import numpy as np

import askexpert.backends
from askexpert.backends import ExpertLibrary
from expert_hub.cli import main


class SlowLibrary:
    """The real library, then a sleep for the rest of `per_frame_s` per frame (no CPU taken)."""

    def __init__(self, inner: ExpertLibrary, per_frame_s: float) -> None:
        self.inner, self.per_frame_s = inner, per_frame_s
        self.keys = inner.keys

    def __call__(self, images: np.ndarray, keys: list[str]) -> np.ndarray:
        t0 = time.monotonic()
        out = self.inner(images, keys)
        time.sleep(max(0.0, self.per_frame_s * len(images) - (time.monotonic() - t0)))
        return out


def slowed(per_frame_s: float):
    real = askexpert.backends.open_backend

    def open_backend(*args, **kwargs):
        backend = real(*args, **kwargs)
        experts = backend.experts
        backend.experts = lambda *a, **k: SlowLibrary(experts(*a, **k), per_frame_s)
        return backend

    return open_backend


if __name__ == "__main__":
    askexpert.backends.open_backend = slowed(float(sys.argv[1]))
    raise SystemExit(main(sys.argv[2:]))
