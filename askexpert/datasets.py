"""Labelled image data sets as uint8 arrays (N, H, W, C), read from local files only.

Shared by the trainer (training data) and the edge node (`dataset:NAME:SPLIT` replay sources).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path(os.environ.get("ATE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


class DatasetError(RuntimeError):
    """A data set that is missing or unreadable, with what to do about it."""


@dataclass
class LabelledImages:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    superclass: np.ndarray | None = None  # per class, where the data set defines superclasses
    superclass_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated")
    return body.reshape(dims)


def load_fashion_mnist(split: str, root: Path | None = None) -> LabelledImages:
    """Fashion-MNIST from Debian's dataset-fashion-mnist package (or ATE_FASHION_MNIST_DIR)."""
    root = Path(root or FASHION_MNIST_DIR)
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DatasetError(f"Fashion-MNIST has splits train and test, not {split!r}")
    img_path, lbl_path = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.is_file() or not lbl_path.is_file():
        raise DatasetError(
            f"Fashion-MNIST not found in {root}: `apt-get install dataset-fashion-mnist` "
            "or set ATE_FASHION_MNIST_DIR to a folder with the four .gz files"
        )
    images = _read_idx(img_path)[..., None]
    labels = _read_idx(lbl_path).astype(np.int64)
    return LabelledImages(images, labels, list(FASHION_MNIST_CLASSES))


LOADERS = {"fashion-mnist": load_fashion_mnist}


def load_dataset(name: str, split: str) -> LabelledImages:
    """Dispatch by name; `name` may also be `folder:PATH` or `cifar100:PATH` where supported."""
    kind, _, arg = name.partition(":")
    if kind not in LOADERS:
        raise DatasetError(f"unknown data set {name!r}; known: {sorted(LOADERS)}")
    return LOADERS[kind](split, Path(arg)) if arg else LOADERS[kind](split)
