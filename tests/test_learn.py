"""`trainer learn` on a tiny budget: a new version of the same pack (same routing, new edge model,
a tau from the grid), which the hot reload accepts in place of the running one."""

from __future__ import annotations

import pytest

from askexpert.collected import CollectedWriter, Kept
from askexpert.datasets import load_fashion_mnist
from askexpert.pack import Pack
from askexpert.reload import PackReloader
from trainer.learn import LearnConfig, learn
from trainer.report import TAUS


@pytest.fixture
def collected(tiny_pack, tmp_path):
    m = Pack.load(tiny_pack).manifest
    test = load_fashion_mnist("test")
    meta = {"pack": m.pack_id, "classes": m.classes, "input": m.input.model_dump(), "counts": {"seen": 100, "offloaded": 40}}
    w = CollectedWriter(tmp_path / "collected", meta, 1000, 1 << 24)
    for i in range(40):
        w.add(test.images[i], Kept("cam1", "r1", i, int(test.labels[i]), 0.9, 0, 0.3, "0", "hub1", "v0", "v0", 0.0))
    w.close(meta)
    return tmp_path / "collected"


def test_learn_writes_a_new_version_that_reloads(tiny_pack, collected, tmp_path):
    old = Pack.load(tiny_pack)
    cfg = LearnConfig(
        str(tiny_pack), str(collected), str(tmp_path / "v2"), epochs=1, batch_size=16, replay=1.0, dataset="fashion-mnist", test_samples=500
    )
    record = learn(cfg, log=lambda *a: None)
    new = Pack.load(tmp_path / "v2")
    assert new.pack_id == old.pack_id and new.version != old.version
    assert new.manifest.generalist.sha256 != old.manifest.generalist.sha256
    assert [e.sha256 for e in new.manifest.experts] == [e.sha256 for e in old.manifest.experts]
    assert new.manifest.tau == old.manifest.tau  # kept (--tau-rule keep)
    assert new.manifest.training["learned"][-1]["tau"]["tau"] in TAUS  # the recalibrated one, on record
    assert record["collected"] == {"frames": 40, "trained_on": 32, "held_out": 8, "alpha_at_collection": 0.4}
    assert record["replay_images"] == 32 and record["fit"]["steps"] == 4  # 64 images, batches of 16, one epoch
    link = tmp_path / "pack"
    link.symlink_to(new.root)
    installed, statuses = [], []
    reloader = PackReloader("edge", link, old, lambda p: p.load_generalist(), lambda p, model: installed.append(p.version), statuses.append)
    reloader.request()
    reloader.join(60)
    assert statuses[-1]["result"] == "loaded" and installed == [new.version]
