"""Frames as the models take them: shared by the edge (live) and evaluation (offline), so that the
offline check feeds the models exactly the pixels the edge fed them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np

from askexpert.datasets import LabelledImages

if TYPE_CHECKING:
    from askexpert.pack import InputSpec  # torch: not needed to shape a frame


def fit_frame(image: np.ndarray, spec: "InputSpec") -> np.ndarray:
    """Any uint8 frame (grey or BGR) -> (size, size, channels) as the models expect (grey or RGB)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[:2] != (spec.size, spec.size):
        image = cv2.resize(image, (spec.size, spec.size), interpolation=cv2.INTER_AREA)
        if image.ndim == 2:
            image = image[:, :, None]
    c = image.shape[2]
    if spec.channels == 1 and c == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    elif spec.channels == 3 and c == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif spec.channels == 3 and c == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def blank_frames(spec: "InputSpec", n: int) -> np.ndarray:
    """`n` black frames at the models' input shape: what a model is warmed up with before real frames."""
    return np.zeros((n, spec.size, spec.size, spec.channels), np.uint8)


def dataset_frames(data: LabelledImages) -> Iterator[tuple[int, np.ndarray, int]]:
    """(index, frame, label) in split order; colour frames BGR, as a camera gives them (data sets are RGB)."""
    for i in range(len(data)):
        image = data.images[i]
        if image.shape[-1] == 3:
            image = image[..., ::-1]
        yield i, image, int(data.labels[i])
