"""The data a training run works on: the three splits, normalised, and what the pack's manifest
needs to preprocess frames the same way (classes, superclasses, mean, std, size, channels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Data:
    """Tensors in memory, or (`--stream`) lazy images that decode per batch in the same places."""

    classes: list[str]
    superclass: list[int] | None
    superclass_names: list[str]
    mean: list[float]
    std: list[float]
    img_size: int
    channels: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
