"""The camera-like shift (askexpert.shift): reproducible per image, two streams that share no image
with each other nor with what the reference pack trained on, readable as a source, and hard enough."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np

from askexpert import shift
from askexpert.datasets import SHIFTED_VAL_FRACTION, SHIFTED_VAL_SEED, load_fashion_mnist, shifted_fashion_mnist_clean, train_val_split
from edge_node.sources import open_source
from evaluation import REFERENCE_PACK
from evaluation.shift import edge_top1


def test_each_image_has_its_own_reproducible_draw():
    clean = load_fashion_mnist("test").images[:6]
    a = shift.shift_images(clean, "score")
    assert a.shape == clean.shape and a.dtype == np.uint8
    assert np.array_equal(a, shift.shift_images(clean, "score"))  # same seed, same bytes
    assert np.array_equal(a[3:], shift.shift_images(clean[3:], "score", start=3))  # independent of what came before
    assert not np.array_equal(a, shift.shift_images(clean, "collect"))  # streams draw differently
    assert np.abs(a.astype(int) - clean).mean() > 5  # and it does change the picture


def test_collect_is_the_packs_held_out_validation_and_score_the_test_split():
    recipe = json.loads((REFERENCE_PACK / "manifest.json").read_text())["training"]["recipe"]
    assert (recipe["val_fraction"], recipe["seed"], recipe["max_val_samples"]) == (SHIFTED_VAL_FRACTION, SHIFTED_VAL_SEED, 0)
    train = load_fashion_mnist("train")
    fit, val = train_val_split(train, recipe["val_fraction"], recipe["seed"])
    collect = shifted_fashion_mnist_clean("collect")
    assert np.array_equal(collect.images, val.images) and len(collect) == 6000
    assert len(shifted_fashion_mnist_clean("score")) == len(load_fashion_mnist("test"))


def test_the_edge_reads_a_stream_as_a_dataset_source():
    source = open_source("dataset:shifted-fashion-mnist:collect")
    frames = list(islice(source.frames(), 4))
    clean = shifted_fashion_mnist_clean("collect")
    assert [f.frame_id for f in frames] == [0, 1, 2, 3]
    assert [f.label for f in frames] == clean.labels[:4].tolist()
    assert np.array_equal(np.stack([f.image for f in frames]), shift.shift_images(clean.images[:4], "collect"))


def test_the_edge_model_loses_over_5pt_on_the_shifted_test_images():
    test = load_fashion_mnist("test")
    x, y = test.images[:2000], test.labels[:2000]
    assert edge_top1(REFERENCE_PACK, x, y) - edge_top1(REFERENCE_PACK, shift.shift_images(x, "score"), y) >= 5.0
