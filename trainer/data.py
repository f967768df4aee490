"""The data a training run works on: the three splits, normalised, and what the pack's manifest
needs to preprocess frames the same way (classes, superclasses, mean, std, size, channels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from askexpert.datasets import LabelledImages, load_dataset, train_val_split


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


def to_tensor(d: LabelledImages, mean: np.ndarray, std: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(d.images).copy()).permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.tensor(mean, dtype=torch.float32)[None, :, None, None]) / torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return x.contiguous(), torch.from_numpy(d.labels.astype(np.int64))


def subsample(d: LabelledImages, n: int, seed: int) -> LabelledImages:
    """At most `n` images of a split (0: all), a seeded choice kept in order."""
    if not n or n >= len(d):
        return d
    idx = np.sort(np.random.default_rng(seed).permutation(len(d))[:n])
    return LabelledImages(d.images[idx], d.labels[idx], d.classes, d.superclass, d.superclass_names)


def validation_split(dataset: str, recipe: dict) -> LabelledImages:
    """The validation split of a pack drawn again from its recorded recipe (seed, val_fraction,
    max_val_samples), as `load_data` drew it: for `trainer` commands on an existing pack."""
    seed = int(recipe.get("seed", 0))
    _, val = train_val_split(load_dataset(dataset, "train"), float(recipe.get("val_fraction", 0.1)), seed)
    return subsample(val, int(recipe.get("max_val_samples", 0)), seed + 3)
