"""The data a training run works on: the three splits, normalised, and what the pack's manifest
needs to preprocess frames the same way (classes, superclasses, mean, std, size, channels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from askexpert.datasets import LabelledImages


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

    @classmethod
    def of(cls, splits: tuple[tuple, tuple, tuple], info: LabelledImages, norm: tuple, shape: tuple[int, int]) -> Data:
        """From (x, y) of the train, validation and test splits; `info`, a split whose classes and
        superclasses these are; `norm`, the per-channel (mean, std); `shape`, (image size, channels)."""
        (xtr, ytr), (xva, yva), (xte, yte) = splits
        mean, std = norm
        return cls(
            classes=list(info.classes),
            superclass=None if info.superclass is None else [int(s) for s in info.superclass],
            superclass_names=list(info.superclass_names),
            mean=[round(float(m), 4) for m in mean],
            std=[round(float(s), 4) for s in std],
            img_size=int(shape[0]),
            channels=int(shape[1]),
            x_train=xtr,
            y_train=ytr,
            x_val=xva,
            y_val=yva,
            x_test=xte,
            y_test=yte,
        )
