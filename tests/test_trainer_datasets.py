"""CIFAR-100 (python and binary formats, restricted unpickling), image folders, validation split."""

import os
import pickle

import numpy as np
import pytest

from askexpert.datasets import DatasetError, LabelledImages, load_cifar100, load_dataset, load_image_folder, train_val_split


def _cifar_python(root, n=12):
    root.mkdir()
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 100, n).tolist()
    for split in ("train", "test"):
        batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine]}
        (root / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"c{i}" for i in range(100)], b"coarse_label_names": [f"s{i}" for i in range(20)]}
    (root / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return fine


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar100_python_format(tmp_path):
    fine = _cifar_python(tmp_path / "cifar-100-python")
    d = load_dataset(f"cifar100:{tmp_path / 'cifar-100-python'}", "train")
    assert d.images.shape == (12, 32, 32, 3) and d.images.dtype == np.uint8
    assert d.labels.tolist() == fine
    assert len(d.classes) == 100 and len(d.superclass_names) == 20
    assert all(d.superclass[f] == f // 5 for f in fine)


def test_cifar100_refuses_foreign_pickles(tmp_path):
    root = tmp_path / "evil"
    _cifar_python(root)
    (root / "train").write_bytes(pickle.dumps({"data": Boom()}))
    with pytest.raises(DatasetError, match="refusing"):
        load_cifar100("train", root)


def test_cifar100_binary_format(tmp_path):
    root = tmp_path / "cifar-100-binary"
    root.mkdir()
    rows = np.zeros((3, 3074), dtype=np.uint8)
    rows[:, 0] = [1, 2, 3]
    rows[:, 1] = [7, 12, 99]
    rows[:, 2:] = 5
    for s in ("train", "test"):
        rows.tofile(root / f"{s}.bin")
    (root / "fine_label_names.txt").write_text("\n".join(f"c{i}" for i in range(100)))
    (root / "coarse_label_names.txt").write_text("\n".join(f"s{i}" for i in range(20)))
    d = load_cifar100("test", root)
    assert d.labels.tolist() == [7, 12, 99] and d.superclass[99] == 3 and d.images.shape == (3, 32, 32, 3)


def test_image_folder_with_superclass_map(tmp_path):
    import cv2

    for cls, val in (("cat", 10), ("dog", 20), ("car", 200)):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / "train" / cls / f"{i}.png"), np.full((20, 20), val, np.uint8))
    (tmp_path / "superclasses.txt").write_text("cat animal\ndog animal\ncar vehicle\n")
    d = load_image_folder("train", tmp_path, size=16)
    assert d.classes == ["car", "cat", "dog"] and d.images.shape == (6, 16, 16, 1)
    assert d.superclass_names == ["animal", "vehicle"] and d.superclass.tolist() == [1, 0, 0]
    assert sorted(set(d.labels.tolist())) == [0, 1, 2]


def test_train_val_split_is_seeded_stratified_and_disjoint():
    images = np.arange(200, dtype=np.uint8).reshape(200, 1, 1, 1)
    d = LabelledImages(images, np.repeat(np.arange(4), 50), list("abcd"))
    tr, va = train_val_split(d, 0.1, seed=1)
    tr2, va2 = train_val_split(d, 0.1, seed=1)
    assert len(va) == 20 and np.bincount(va.labels).tolist() == [5] * 4
    assert np.array_equal(va.images, va2.images)
    assert not set(tr.images.ravel()) & set(va.images.ravel())


@pytest.mark.slow  # DataLoader worker processes: about 20 s on the busy 2-core box
def test_streaming_folder_trains_as_the_in_memory_folder(tmp_path):
    """A folder decoded per batch by DataLoader workers gives the same images, and the same fit, as
    the folder decoded into memory."""
    import cv2
    import torch

    from askexpert.datasets import StreamingImages, list_image_folder
    from askexpert.models import ViTArch, build_vit
    from trainer.engine import FitEnv, FitSpec, Job, fit

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(8):
            cv2.imwrite(str(tmp_path / "train" / c / f"{i}.png"), rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    d = load_image_folder("train", tmp_path)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    x = (torch.from_numpy(d.images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[
        :, None, None
    ]
    stream = StreamingImages(list_image_folder("train", tmp_path).files, 12, 3, mean, std)
    assert len(stream) == 24 and np.allclose(stream[5][0], x[5].numpy(), atol=1e-6) and stream[5][1] == 5
    y = torch.from_numpy(d.labels)
    models = []
    for inputs in (x, stream):
        torch.manual_seed(0)
        m = build_vit(ViTArch(16, 1, 2, 2.0, 4, 12, 3, 3))
        fit([Job("m", m)], inputs, y, None, FitSpec(epochs=2, batch_size=8, lr=1e-3, seed=2, workers=1), FitEnv(log=lambda s: None))
        models.append(m.state_dict())
    assert all(torch.allclose(models[0][k], models[1][k], atol=1e-5) for k in models[0])


@pytest.mark.slow  # two tiny teacher fits, one through DataLoader workers
def test_trainer_streams_a_folder_as_it_loads_it(tmp_path):
    """`--stream`: the same split, normalisation and teacher as the folder loaded into memory."""
    import json

    import cv2
    import torch
    from safetensors.torch import load_file

    from trainer.cli import main

    rng = np.random.default_rng(1)
    for split, n in (("train", 20), ("test", 4)):
        for c in ("a", "b", "c"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(tmp_path / "data" / split / c / f"{i}.png"), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    flags = ["--dataset", f"folder:{tmp_path / 'data'}", "--head-dim", "8", "--depth", "1", "--teacher-shape", "4H", "--epochs", "2"]
    flags += ["--batch-size", "16", "--patch-size", "8", "--threads", "1"]
    for mode in ("memory", "stream"):
        assert main(["teacher", *flags, "--work", str(tmp_path / mode), *(["--stream"] if mode == "stream" else [])]) == 0
    mem, st = (load_file(str(tmp_path / m / "teacher.safetensors")) for m in ("memory", "stream"))
    assert all(torch.allclose(mem[k], st[k], atol=1e-5) for k in mem)
    info = [json.loads((tmp_path / m / "teacher.json").read_text()) for m in ("memory", "stream")]
    assert info[0]["val_top1"] == info[1]["val_top1"] and info[0]["train_top1"] == info[1]["train_top1"]
