"""Labelled image data sets as uint8 arrays (N, H, W, C), read from local files only.

Shared by the trainer (training data) and the edge node (`dataset:NAME:SPLIT` replay sources).
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path(os.environ.get("ATE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


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


CIFAR100_DIR = Path(os.environ.get("ATE_CIFAR100_DIR", "cifar-100-python"))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python-format batches and nothing else: only numpy array globals resolve."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # pickle API
        if (module, name) not in self._ALLOWED:
            raise DatasetError(f"refusing to unpickle {module}.{name}: not a CIFAR-100 data file")
        return super().find_class(module, name)


def _restricted_load(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} is not a CIFAR-100 batch (a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_names(raw) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in raw]


def load_cifar100(split: str, root: Path | None = None) -> LabelledImages:
    """CIFAR-100, fine labels with the 20 coarse superclasses.

    Reads the python-format folder (`cifar-100-python/` with `train`, `test`, `meta`) through a
    restricted unpickler that resolves numpy array globals only, or the binary format
    (`cifar-100-binary/` with `train.bin`, `test.bin`, `fine_label_names.txt`,
    `coarse_label_names.txt`), which needs no unpickling at all.
    """
    root = Path(root or CIFAR100_DIR)
    if split not in ("train", "test"):
        raise DatasetError(f"CIFAR-100 has splits train and test, not {split!r}")
    if (root / f"{split}.bin").is_file():
        raw = np.fromfile(root / f"{split}.bin", dtype=np.uint8)
        if raw.size % 3074:
            raise DatasetError(f"{root / f'{split}.bin'} is truncated")
        raw = raw.reshape(-1, 3074)
        coarse, fine = raw[:, 0].astype(np.int64), raw[:, 1].astype(np.int64)
        images = raw[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        classes = (root / "fine_label_names.txt").read_text().split()
        super_names = (root / "coarse_label_names.txt").read_text().split()
    elif (root / split).is_file() and (root / "meta").is_file():
        batch, meta = _restricted_load(root / split), _restricted_load(root / "meta")
        data = np.asarray(batch["data"], dtype=np.uint8)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        fine = np.asarray(batch["fine_labels"], dtype=np.int64)
        coarse = np.asarray(batch["coarse_labels"], dtype=np.int64)
        classes, super_names = _cifar_names(meta["fine_label_names"]), _cifar_names(meta["coarse_label_names"])
    else:
        raise DatasetError(f"CIFAR-100 not found in {root}: give the extracted cifar-100-python or cifar-100-binary folder")
    superclass = np.zeros(len(classes), dtype=np.int64)
    superclass[fine] = coarse
    return LabelledImages(images, fine, classes, superclass, super_names)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
SUPERCLASS_MAP = "superclasses.txt"


@dataclass
class ImageFiles:
    """An image folder listed but not decoded: one file and label per image."""

    files: list[Path]
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    superclass: np.ndarray | None = None
    superclass_names: list[str] = field(default_factory=list)


def list_image_folder(split: str, root: Path | None = None) -> ImageFiles:
    """The files of `ROOT/SPLIT/CLASS/*` (or `ROOT/CLASS/*` when there are no split folders), classes
    being the sorted folder names, with the superclasses of an optional `ROOT/superclasses.txt`
    (`class superclass` per line)."""
    if root is None:
        raise DatasetError("an image folder data set needs a path: folder:PATH")
    root = Path(root)
    base = root / split if (root / split).is_dir() else root
    if not base.is_dir():
        raise DatasetError(f"image folder {base} not found")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and d.name not in ("train", "test", "val"))
    if not classes:
        raise DatasetError(f"{base} has no class folders")
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((base / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DatasetError(f"{base} has no images")
    superclass, super_names = None, []
    map_file = root / SUPERCLASS_MAP
    if map_file.is_file():
        pairs = dict(line.split()[:2] for line in map_file.read_text().splitlines() if line.strip() and not line.startswith("#"))
        missing = [c for c in classes if c not in pairs]
        if missing:
            raise DatasetError(f"{map_file} has no superclass for {missing[:5]}")
        super_names = sorted(set(pairs[c] for c in classes))
        superclass = np.array([super_names.index(pairs[c]) for c in classes], dtype=np.int64)
    labels = np.array([c for _, c in files], dtype=np.int64)
    return ImageFiles([f for f, _ in files], labels, classes, superclass, super_names)


def _fit_image(im: np.ndarray, size: int, grey: bool) -> np.ndarray:
    """A decoded image as uint8 (size, size, 1 or 3): 8-bit, grey or RGB, resized (area)."""
    import cv2

    if im.dtype != np.uint8:
        im = cv2.normalize(im, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if grey and im.ndim == 3:
        im = cv2.cvtColor(im[..., :3], cv2.COLOR_BGR2GRAY)
    elif not grey:
        im = cv2.cvtColor(im, cv2.COLOR_GRAY2RGB) if im.ndim == 2 else cv2.cvtColor(im[..., :3], cv2.COLOR_BGR2RGB)
    im = cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
    return im.reshape(size, size, -1)


def load_image_folder(split: str, root: Path | None = None, size: int | None = None) -> LabelledImages:
    """An image folder (`list_image_folder`) decoded into memory. Images are resized to `size`
    (default: the first image's shape, square) and kept grey if every image is grey, else RGB.
    For folders too large for memory, `StreamingImages` decodes per batch instead."""
    import cv2  # only needed for folders

    listed = list_image_folder(split, root)
    raw = [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in listed.files]
    bad = [str(f) for f, im in zip(listed.files, raw) if im is None]
    if bad:
        raise DatasetError(f"unreadable images: {bad[:3]}")
    grey = all(im.ndim == 2 for im in raw)
    size = size or raw[0].shape[0]
    out = np.stack([_fit_image(im, size, grey) for im in raw])
    return LabelledImages(out, listed.labels, listed.classes, listed.superclass, listed.superclass_names)


class StreamingImages:
    """Images of a folder decoded one at a time, in DataLoader worker processes, never all in memory:
    item i is (float32 (C, size, size) normalised by `mean`/`std` per channel, i), as the trainer's
    in-memory tensors are. A map-style data set for `trainer.engine.fit`."""

    def __init__(self, files: list[Path], size: int, channels: int, mean: list[float], std: list[float]) -> None:
        self.files, self.size, self.grey = list(files), size, channels == 1
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        import cv2

        im = cv2.imread(str(self.files[i]), cv2.IMREAD_UNCHANGED)
        if im is None:
            raise DatasetError(f"unreadable image {self.files[i]}")
        x = _fit_image(im, self.size, self.grey).transpose(2, 0, 1).astype(np.float32) / 255.0
        return (x - self.mean) / self.std, i


class LazyImages:
    """Streamed images indexed as the trainer indexes its in-memory tensors (by position, slice or
    index tensor: a lazy selection) and decoded only when used: `.to(device)` decodes the selection
    (an evaluation batch), and a DataLoader reads item i as (image, i) in its workers (training)."""

    def __init__(self, stream: StreamingImages, index: np.ndarray | None = None) -> None:
        self.stream = stream
        self.index = np.arange(len(stream)) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.stream[int(self.index[key])][0], int(key)
        if hasattr(key, "cpu"):  # a torch index tensor
            key = key.cpu().numpy()
        return LazyImages(self.stream, self.index[key])

    def to(self, device):
        """The selection decoded: a float32 tensor (N, C, H, W) on `device`."""
        import torch

        if not len(self.index):
            return torch.empty(0, 1 if self.stream.grey else 3, self.stream.size, self.stream.size, device=device)
        return torch.from_numpy(np.stack([self.stream[int(i)][0] for i in self.index])).to(device)


def list_dataset(name: str, split: str) -> LabelledImages:
    """An image folder's split listed, not decoded: `images` holds the file paths (an object array),
    so the trainer's split and subsampling select files as they would select images."""
    kind, _, arg = name.partition(":")
    if kind != "folder" or not arg:
        raise DatasetError(f"only folder:PATH data sets stream (decode per batch), not {name!r}")
    listed = list_image_folder(split, Path(arg))
    files = np.empty(len(listed.files), dtype=object)
    files[:] = listed.files
    return LabelledImages(files, listed.labels, listed.classes, listed.superclass, listed.superclass_names)


def stream_stats(files: np.ndarray, size: int | None, sample: int = 2000, seed: int = 0) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(size, channels, mean, std) of a folder's images from a seeded sample of at most `sample`
    files: size the first image's (unless given), grey only if every sampled image is grey."""
    import cv2

    pick = np.sort(np.random.default_rng(seed).permutation(len(files))[:sample])
    raw = [cv2.imread(str(files[i]), cv2.IMREAD_UNCHANGED) for i in pick]
    if any(im is None for im in raw):
        raise DatasetError(f"unreadable images among {[str(files[i]) for i, im in zip(pick, raw) if im is None][:3]}")
    grey = all(im.ndim == 2 for im in raw)
    size = size or raw[0].shape[0]
    pix = np.stack([_fit_image(im, size, grey) for im in raw]).reshape(-1, 1 if grey else 3).astype(np.float64) / 255.0
    return size, 1 if grey else 3, np.round(pix.mean(axis=0), 4), np.round(pix.std(axis=0) + 1e-8, 4)


def train_val_split(data: LabelledImages, val_fraction: float = 0.1, seed: int = 0) -> tuple[LabelledImages, LabelledImages]:
    """Hold out a seeded, class-stratified validation split from a training split."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(data.labels):
        idx = np.flatnonzero(data.labels == c)
        rng.shuffle(idx)
        val_idx.append(idx[: max(1, int(round(len(idx) * val_fraction)))])
    val = np.zeros(len(data), dtype=bool)
    val[np.concatenate(val_idx)] = True

    def take(mask: np.ndarray) -> LabelledImages:
        return LabelledImages(data.images[mask], data.labels[mask], data.classes, data.superclass, data.superclass_names)

    return take(~val), take(val)


SHIFTED_VAL_FRACTION, SHIFTED_VAL_SEED = 0.1, 0  # the reference pack's recipe: its validation split is `collect`


def shifted_fashion_mnist_clean(split: str, root: Path | None = None) -> LabelledImages:
    """The unshifted images behind a stream of `askexpert.shift` (see its docstring for why these)."""
    if split == "score":
        return load_fashion_mnist("test", root)
    if split == "collect":
        return train_val_split(load_fashion_mnist("train", root), SHIFTED_VAL_FRACTION, SHIFTED_VAL_SEED)[1]
    raise DatasetError(f"shifted Fashion-MNIST has splits collect and score, not {split!r}")


def load_shifted_fashion_mnist(split: str, root: Path | None = None) -> LabelledImages:
    """`shifted-fashion-mnist`: Fashion-MNIST through `askexpert.shift`'s camera at its SEVERITY,
    streams `collect` and `score`, made on load (a few seconds)."""
    from askexpert.shift import shift_images  # Pillow: only for this data set

    clean = shifted_fashion_mnist_clean(split, root)
    return LabelledImages(shift_images(clean.images, split), clean.labels, clean.classes)


LOADERS = {
    "fashion-mnist": load_fashion_mnist,
    "shifted-fashion-mnist": load_shifted_fashion_mnist,
    "cifar100": load_cifar100,
    "folder": load_image_folder,
}


def load_dataset(name: str, split: str) -> LabelledImages:
    """Dispatch by name; `name` may also be `folder:PATH` or `cifar100:PATH` where supported."""
    kind, _, arg = name.partition(":")
    if kind not in LOADERS:
        raise DatasetError(f"unknown data set {name!r}; known: {sorted(LOADERS)}")
    return LOADERS[kind](split, Path(arg)) if arg else LOADERS[kind](split)
