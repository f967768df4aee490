"""The edge's live gate and the offline labeller give the same answer on the same logits, also for
frames whose confidence is exactly tau (which stay at the edge: Algorithm 1's conf >= tau)."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
from helpers import Collector

from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.routing import decide, offline_labels
from edge_node.node import EdgeNode
from edge_node.settings import EdgeSettings
from edge_node.sources import Frame, Source

NEG = -1e4  # exp underflows to exactly 0 in float64: the softmax of [0, 0, NEG, ...] is exactly 0.5


def designed_logits(n_classes: int) -> np.ndarray:
    """Rows with confidence exactly 0.5 and 0.25, just below and above them, and clear cases."""
    rows = []
    for top in range(4):  # exactly 0.5: two equal classes, ties routed to the lower index
        r = np.full(n_classes, NEG)
        r[[top, (top + 3) % n_classes]] = 0.0
        rows.append(r)
    r = np.full(n_classes, NEG)  # exactly 0.25: four equal classes
    r[[1, 4, 6, 8]] = 0.0
    rows.append(r)
    for eps in (1e-9, -1e-9, 1e-6, -1e-6):  # a hair above and below 0.5
        r = np.full(n_classes, NEG)
        r[[2, 5]] = (eps, 0.0)
        rows.append(r)
    rng = np.random.default_rng(0)
    rows += list(rng.normal(0, 3, (23, n_classes)))
    return np.asarray(rows, dtype=np.float32)


class Rows(Source):
    """Frame i carries i in its first pixel, so the fake classifier knows which logits row to give."""

    description = "designed rows"

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def frames(self) -> Iterator[Frame]:
        for i in range(self.n):
            image = np.zeros((self.size, self.size, 1), np.uint8)
            image[0, 0, 0] = i
            yield Frame(i, image, time.time())


def test_edge_gate_equals_offline_labeller_at_and_around_tau(tiny_pack, broker):
    pack = Pack.load(tiny_pack)
    logits = designed_logits(len(pack.manifest.classes))
    for tau in (0.5, 0.25):
        node_id = f"gate{int(tau * 100)}"
        s = EdgeSettings(broker=broker.url, pack=tiny_pack, node_id=node_id, tau=tau, batch_size=5, deadline_ms=200, stats_interval_s=0)
        client = MqttClient(s, "edge", node_id)
        node = EdgeNode(s, pack, lambda images: logits[images[:, 0, 0, 0].astype(int)], client)
        sub = Collector(broker.url, f"ate/v1/nodes/{node_id}/labels")
        client.start()
        assert client.wait_connected(10)
        stats = node.run(Rows(len(logits), pack.manifest.input.size))
        client.stop()
        labels = {m.frame_id: m for m in sub.wait_labels(len(logits), timeout=10)}
        sub.close()
        assert stats.frames == len(labels) == len(logits)

        d = decide(logits, pack.manifest.partition, pack.manifest.k)
        routed = np.zeros_like(logits)  # no hub: what matters is which frames leave, and to whom
        offline, off = offline_labels(d, routed, tau)
        for i, m in labels.items():
            assert (m.source != "edge") == bool(off[i]), f"frame {i} (conf {d.conf[i]!r}) gated differently at tau {tau}"
            assert m.edge_label == int(d.edge_label[i])
            if off[i]:
                assert m.expert == d.expert[i] and m.source == "edge-fallback"
            else:
                assert m.label == int(offline[i])
        at_tau = [i for i in range(len(logits)) if d.conf[i] == tau]
        assert at_tau and all(labels[i].source == "edge" for i in at_tau), "conf == tau stays at the edge"


def test_gate_thread_keeps_frame_order_and_reports_its_failure(tiny_pack, broker):
    """The gate runs on its own thread while the next batch is inferred: labels still leave in frame
    order, batch after batch, and an error in the gate ends the run with that error (no hang)."""
    import pytest

    pack = Pack.load(tiny_pack)
    logits = designed_logits(len(pack.manifest.classes))
    s = EdgeSettings(broker=broker.url, pack=tiny_pack, node_id="order", tau=0.0, batch_size=3, deadline_ms=200, stats_interval_s=0)
    client = MqttClient(s, "edge", "order")
    node = EdgeNode(s, pack, lambda images: logits[images[:, 0, 0, 0].astype(int)], client)
    sub = Collector(broker.url, "ate/v1/nodes/order/labels")
    client.start()
    assert client.wait_connected(10)
    node.run(Rows(len(logits), pack.manifest.input.size))
    assert [m.frame_id for m in sub.wait_labels(len(logits), timeout=10)] == list(range(len(logits)))
    sub.close()

    failing = EdgeNode(s, pack, lambda images: logits[images[:, 0, 0, 0].astype(int)], client)
    published = failing._publish_label

    def publish_then_fail(item, **kw) -> None:
        if item.frame_id == 7:
            raise RuntimeError("gate broke")
        published(item, **kw)

    failing._publish_label = publish_then_fail
    with pytest.raises(RuntimeError, match="gate broke"):
        failing.run(Rows(len(logits), pack.manifest.input.size))
    client.stop()
