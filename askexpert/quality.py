"""Label-free quality signals: the offload share alpha and the expert's disagreement with the edge.

In the field there is no ground truth, but two signals need none: alpha (the share of frames the
edge offloads) rises when the scene leaves the training distribution, and the disagreement (the
share of answered offloads whose expert label differs from the edge's top-1) moves when the edge
or the expert goes wrong on what it sees. The pack records what both read at its tau on the
validation split (`QualityBand`, in the manifest); the edge counts them (askexpert/metrics.py)
and keeps them over sliding windows (`SlidingShare`); a node is out of its band when a full
window lies outside it. The Prometheus rule `ATEQualityDrift` (docker/monitoring/rules.yml) applies the
same rule to the same gauges.

The band rule: expected share p measured on n_val validation items, a window of n items; the
band is p +- Z sqrt(p (1 - p) (1/n + 1/n_val)): the binomial spread of a window of n
independent items around p, widened by the validation estimate's own. Consecutive camera frames
are not independent, so a camera's window spreads more than this: the alert waits (`for`) before
it fires.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field

from askexpert.routing import decide

Z = 4.0  # band half-width in binomial standard deviations: a stream is watched through many overlapping windows
WINDOW_FRAMES = 1000  # gated frames in the alpha window
WINDOW_ANSWERS = 400  # answered offloads in the disagreement window
RULE = "p +- 4 sqrt(p(1-p)(1/n + 1/n_val)), n the window (gated frames for alpha, answered offloads for disagreement)"


class Signal(BaseModel):
    """One signal's expected share at the pack's tau and its band over a window of `window` items."""

    expected: float = Field(ge=0.0, le=1.0)
    low: float = Field(ge=0.0, le=1.0)
    high: float = Field(ge=0.0, le=1.0)
    window: int = Field(gt=0, description="items in the window the band is stated for")
    val_items: int = Field(gt=0, description="validation items the expected share was measured on")

    def contains(self, share: float) -> bool:
        return self.low <= share <= self.high


class QualityBand(BaseModel):
    """What a healthy edge reads at the pack's tau, measured on the validation split."""

    tau: float = Field(ge=0.0, le=1.0)
    split: str = "validation"
    rule: str = RULE
    alpha: Signal
    disagreement: Signal


def band(p: float, window: int, val_items: int, z: float = Z) -> Signal:
    """The band rule (module docstring) for a share p measured on val_items, over `window` items."""
    half = z * math.sqrt(p * (1 - p) * (1 / window + 1 / val_items))
    return Signal(
        expected=round(p, 6), low=round(max(0.0, p - half), 6), high=round(min(1.0, p + half), 6), window=window, val_items=val_items
    )


def expected_band(
    edge_logits: np.ndarray,
    expert_labels: np.ndarray,
    partition: Sequence[int],
    k: int,
    tau: float,
) -> QualityBand:
    """The band from validation outputs: the edge generalist's logits for every frame, and for each
    frame the label its routed expert gives (read only where the frame is offloaded at tau)."""
    d = decide(edge_logits, partition, k)
    off = d.offloaded(tau)
    if not off.any():
        raise ValueError(f"no validation frame is offloaded at tau {tau}: no disagreement to expect")
    alpha = float(off.mean())
    disagree = float((np.asarray(expert_labels)[off] != d.edge_label[off]).mean())
    return QualityBand(
        tau=tau,
        alpha=band(alpha, WINDOW_FRAMES, len(off)),
        disagreement=band(disagree, WINDOW_ANSWERS, int(off.sum())),
    )


class SlidingShare:
    """The share of True among the last `size` outcomes; NaN until the window is full (a band is
    stated for a full window). One thread adds; any may read."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[bool] = deque(maxlen=size)
        self._true = 0

    def add(self, outcome: bool) -> None:
        if len(self._items) == self.size:
            self._true -= self._items[0]
        self._items.append(outcome)
        self._true += outcome

    def share(self) -> float:
        return self._true / self.size if len(self._items) == self.size else math.nan


def outside(band: QualityBand, alpha: float, disagreement: float) -> list[str]:
    """The signals (alpha, disagreement) whose windowed share lies outside the band; a window not
    yet full (NaN) is never outside."""
    shares = {"alpha": alpha, "disagreement": disagreement}
    return [name for name, s in shares.items() if not math.isnan(s) and not getattr(band, name).contains(s)]
