"""Collecting offloads for on-site learning (edge_node/collect.py, askexpert/collected.py): the
sampling rules in their documented order, a bounded folder the trainer reads back bit-exactly, and
the join of frames and labels over a real broker."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from askexpert.collected import CollectedError, CollectedWriter, Kept, read_collected
from askexpert.datasets import load_fashion_mnist
from askexpert.mqtt import MqttClient
from askexpert.protocol import FrameBatch, LabelMsg, labels_topic
from edge_node.collect import Collector, Rules, Sampler, parse_ranges, rules_from
from edge_node.settings import CollectSettings

META = {"pack": "p1", "classes": [str(c) for c in range(10)], "input": {"size": 28, "channels": 1, "mean": [0.3], "std": [0.3]}}


def kept(frame_id: int = 0, label: int = 1, conf: float = 0.9, edge_label: int = 2, edge_conf: float = 0.5) -> Kept:
    return Kept("cam1", "r1", frame_id, label, conf, edge_label, edge_conf, "0-1", "hub1", "v1", "v1", 0.0)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rules_skip_in_their_documented_order():
    rules = Rules(edge_conf=(0.2, 0.8), min_expert_conf=0.6, per_class=2, exclude_classes=frozenset({7}), exclude_frames=((10, 19),))
    s = Sampler(rules)
    assert s.skip(kept(frame_id=12, label=7, edge_conf=0.9)) == "excluded-frames"
    assert s.skip(kept(edge_label=7, edge_conf=0.9)) == "excluded-class"
    assert s.skip(kept(label=7)) == "excluded-class"
    assert s.skip(kept(edge_conf=0.9, conf=0.1)) == "band"
    assert s.skip(kept(edge_conf=0.1)) == "band"
    assert s.skip(kept(conf=0.5)) == "expert-conf"
    for _ in range(2):
        assert s.skip(kept(label=3)) is None
        s.taken(kept(label=3))
    assert s.skip(kept(label=3)) == "class-cap"
    assert s.skip(kept(label=4)) is None  # the cap is per class


def test_rate_limit_keeps_one_seconds_worth_then_refills():
    clock = Clock()
    s = Sampler(Rules(max_per_s=3), clock)
    outcomes = []
    for _ in range(5):
        why = s.skip(kept())
        outcomes.append(why)
        if why is None:
            s.taken(kept())
    assert outcomes == [None, None, None, "rate", "rate"]
    clock.t += 0.5  # one and a half tokens: one more frame
    assert s.skip(kept()) is None
    s.taken(kept())
    assert s.skip(kept()) == "rate"


def test_rules_from_settings_check_names_and_ranges(tmp_path):
    s = CollectSettings(node_id="cam1", out=tmp_path, exclude_classes="Bag, Coat", exclude_frames="0-9,42")
    r = rules_from(s, ["Coat", "x", "Bag"])
    assert r.exclude_classes == {0, 2} and r.exclude_frames == ((0, 9), (42, 42))
    with pytest.raises(ValueError, match="Hat"):
        rules_from(CollectSettings(node_id="cam1", out=tmp_path, exclude_classes="Hat"), ["Coat"])
    with pytest.raises(ValueError):
        parse_ranges("9-3")


def test_folder_is_bounded_and_reads_back_exactly(tmp_path):
    images = load_fashion_mnist("test").images[:5]
    w = CollectedWriter(tmp_path / "c", META, max_frames=3, max_bytes=1 << 20)
    assert [w.add(im, kept(frame_id=i, label=i)) for i, im in enumerate(images)] == [True, True, True, False, False]
    w.close({"counts": {"seen": 5}})
    col = read_collected(tmp_path / "c")
    assert np.array_equal(col.images, images[:3]) and col.column("label").tolist() == [0, 1, 2]
    assert col.meta["kept"] == 3 and col.meta["counts"] == {"seen": 5}
    small = CollectedWriter(tmp_path / "s", META, max_frames=100, max_bytes=1000)  # about two Fashion-MNIST PNGs
    added = [small.add(im, kept(frame_id=i)) for i, im in enumerate(images)]
    assert added[0] and not added[-1] and small.bytes <= 1000
    with pytest.raises(CollectedError, match="not empty"):
        CollectedWriter(tmp_path / "c", META, 10, 1 << 20)


def _label(fid: int, source: str, expert: str | None, label: int = 3) -> bytes:
    return LabelMsg(
        node="cam1", frame_id=fid, label=label, label_name=str(label), conf=0.95, source=source, expert=expert, latency_ms=1.0,
        t_capture=0.0, edge_label=1, edge_conf=0.4 if expert else 0.99, pack="p1", run="r1", pack_version="v1",
    ).encode()  # fmt: skip


def test_collector_joins_frames_and_labels_over_a_broker(broker, tmp_path):
    images = load_fashion_mnist("test").images[:4]
    s = CollectSettings(node_id="cam1", out=tmp_path / "c", broker=broker.url, exclude_frames="3")
    collector = Collector(s, rules_from(s, META["classes"]), CollectedWriter(s.out, META, 100, 1 << 20)).start()
    edge = MqttClient(s, "edge", "cam1")
    edge.start()
    assert edge.wait_connected(5)
    frames = FrameBatch(
        node="cam1", run="r1", pack="p1", frame_ids=np.arange(4), t_capture=np.zeros(4), topk=np.tile([1, 3], (4, 1)),
        topk_p=np.full((4, 2), 0.4), images=images, pack_version="v1",
    )  # fmt: skip
    edge.publish_frames(s.prefix, "0-1", frames)
    wrong = FrameBatch(
        node="cam1", run="r1", pack="p1", frame_ids=np.array([8]), t_capture=np.zeros(1), topk=np.array([[1, 3]]),
        topk_p=np.full((1, 2), 0.4), images=np.zeros((1, 32, 32, 1), np.uint8), pack_version="v1",
    )  # fmt: skip
    edge.publish_frames(s.prefix, "0-1", wrong)  # not the pack's 28x28x1: never kept, frame 8 not seen
    topic = labels_topic(s.prefix, "cam1")
    for payload in (_label(9, "edge", None), _label(0, "expert", "0-1", 5), _label(1, "edge-fallback", "0-1"),
                    _label(2, "expert", "0-1", 7), _label(3, "expert", "0-1"), _label(8, "expert", "0-1")):  # fmt: skip
        edge.publish(topic, payload, qos=1)
    assert edge.flush(5)
    end = time.monotonic() + 10
    while sum(collector.counts.values()) < 6 + 5 + 1 and time.monotonic() < end:  # 6 labels seen, 5 outcomes, 1 malformed
        time.sleep(0.05)
    report = collector.stop()
    edge.stop()
    expected = {"seen": 6, "offloaded": 5, "kept": 2, "no-answer": 1, "excluded-frames": 1, "frame-not-seen": 1, "malformed": 1}
    assert report["counts"] == expected
    col = read_collected(s.out)
    assert col.column("frame_id").tolist() == [0, 2] and col.column("label").tolist() == [5, 7]
    assert np.array_equal(col.images, images[[0, 2]])
    assert json.loads((s.out / "meta.json").read_text())["state"] == "closed"


def test_colour_frames_read_back_as_the_same_rgb_arrays(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    w = CollectedWriter(tmp_path / "c", META | {"input": {"size": 8, "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}}, 10, 1 << 20)
    for i, im in enumerate(rgb):
        w.add(im, kept(frame_id=i))
    w.close({})
    assert np.array_equal(read_collected(tmp_path / "c").images, rgb)
