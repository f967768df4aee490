"""The backend interface and the preprocessing every backend shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

import numpy as np

from askexpert.pack import ExpertEntry, ModelEntry, Pack


def to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W), as the trainer feeds the models."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) * (1.0 / 255.0)
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - m) / s)


class Classifier(ABC):
    """A whole-frame classifier (the edge generalist, or a baseline)."""

    @abstractmethod
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> logits float32 (N, classes)."""


class ExpertLibrary(ABC):
    """The experts a hub serves. One call may mix experts: a shared trunk then runs once."""

    keys: list[str]

    @abstractmethod
    def __call__(self, images: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        """uint8 (N, H, W, C) and one expert key per row -> logits float32 (N, classes)."""


class Backend(ABC):
    name: str
    # Where a slow model build (a TensorRT engine: minutes) says how far it is, as `state, **info`;
    # the component lifecycle points it at the retained status. Fast backends never call it.
    on_status: Callable[..., None] | None = None

    @abstractmethod
    def classifier(self, pack: Pack, entry: ModelEntry) -> Classifier: ...

    @abstractmethod
    def experts(self, pack: Pack, entries: Sequence[ExpertEntry]) -> ExpertLibrary: ...


def group_rows(keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Row indices per expert key, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return {k: np.asarray(v) for k, v in groups.items()}
