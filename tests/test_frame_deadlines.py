"""Deadlines carried in the frame: the hub drops frames already too late before inference, counts
them, serves frames of older edges (no deadline) as before, and bounds what a frame may claim."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_hub_robustness import _publisher, _send

from askexpert import metrics
from askexpert.backends import open_backend
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import MAX_DEADLINE_MS, FrameMsg, ProtocolError, decode_frame, frames_topic
from expert_hub.hub import ExpertHub
from expert_hub.settings import HubSettings

IMAGE = np.zeros((28, 28, 1), np.uint8)


def frame(fid: int, pack: str, deadline_ms: float | None, version: str | None = None) -> FrameMsg:
    return FrameMsg("n", fid, time.time(), pack, [0, 2], [0.4, 0.3], IMAGE, deadline_ms=deadline_ms, pack_version=version)


def test_the_deadline_travels_and_is_bounded():
    assert decode_frame(frame(1, "p", 250.5, "v1").encode()).deadline_ms == 250.5
    old = decode_frame(frame(1, "p", None).encode())  # an older edge's frame: no field
    assert old.deadline_ms is None and old.pack_version is None
    for hostile in (MAX_DEADLINE_MS + 1, -1.0, float("nan"), float("inf")):
        with pytest.raises(ProtocolError, match="'dl'"):
            decode_frame(frame(1, "p", hostile).encode())


def test_the_hub_drops_late_frames_before_inference_and_serves_old_ones(tiny_pack, broker):
    pack = Pack.load(tiny_pack)
    settings = HubSettings(broker=broker.url, pack=tiny_pack, hub_id="hd", stats_interval_s=0)
    client = MqttClient(settings, "hub", "hd")
    hub = ExpertHub(settings, pack, open_backend("torch").experts(pack, pack.manifest.experts), client)
    expired = metrics.EXPIRED.labels("hd", "deadline")
    before = expired._value.get()
    hub.start()
    client.start()
    assert client.wait_connected(10)
    time.sleep(0.3)
    pub, replies, got = _publisher(broker)
    topic = frames_topic("ate/v1", "0-2", "n")
    try:
        _send(pub, topic, frame(10, pack.pack_id, 0.0).encode())  # its edge has already given up
        _send(pub, topic, frame(11, pack.pack_id, 1e12).encode())  # a hostile claim: rejected
        _send(pub, topic, frame(12, pack.pack_id, None).encode())  # an older edge: served as before
        _send(pub, topic, frame(13, pack.pack_id, 5000.0, pack.version).encode())
        deadline = time.monotonic() + 10
        while len(replies) < 2 and time.monotonic() < deadline:
            got.wait(0.2)
        time.sleep(0.3)
    finally:
        pub.loop_stop()
        hub.stop()
        client.stop()
    assert sorted(r.frame_id for r, _ in replies) == [12, 13]
    assert {r.pack_version for r, _ in replies} == {pack.version}
    assert (hub.stats.expired, hub.stats.rejected, hub.stats.answered) == (1, 1, 2)
    assert expired._value.get() - before == 1
