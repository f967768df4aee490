"""Deadlines carried in the frame: the hub drops frames already too late before inference, counts
them, serves frames of older edges (no deadline) as before, and bounds what a frame may claim."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from helpers import frames
from test_hub_robustness import _publisher, _send

from askexpert import metrics
from askexpert.backends import open_backend
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import MAX_DEADLINE_MS, FrameBatch, ProtocolError, decode_frames, frames_topic
from expert_hub.hub import ExpertHub
from expert_hub.settings import HubSettings

IMAGE = np.zeros((28, 28, 1), np.uint8)


def frame(fid: int, pack: str, deadline_ms: float | None, version: str | None = None) -> FrameBatch:
    return frames("n", [fid], pack, IMAGE, deadline_ms=deadline_ms, version=version)


def test_the_deadline_travels_and_is_bounded():
    assert decode_frames(frame(1, "p", 250.5, "v1").encode()).deadline_ms.tolist() == [250.5]
    old = decode_frames(frame(1, "p", None).encode())  # an edge with --no-frame-deadline: no field
    assert old.deadline_ms is None and old.pack_version is None
    for hostile in (MAX_DEADLINE_MS + 1, -1.0, float("nan"), float("inf")):
        with pytest.raises(ProtocolError, match="'dl'"):
            decode_frames(frame(1, "p", hostile).encode())


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
    assert sorted(fid for r, _ in replies for fid in r.frame_ids.tolist()) == [12, 13]
    assert {r.pack_version for r, _ in replies} == {pack.version}
    assert (hub.stats.expired, hub.stats.rejected, hub.stats.answered) == (1, 1, 2)
    assert expired._value.get() - before == 1


def test_under_overload_the_batch_is_what_can_still_make_it(tiny_pack):
    """A batch that could not all be answered in time: the frames with the most time left, as many
    as fit; the others held for the next batch; frames that could not make it even alone dropped."""
    from expert_hub.hub import Job, Part, Raw

    pack = Pack.load(tiny_pack)
    settings = HubSettings(pack=tiny_pack, hub_id="hs", max_batch=4, stats_interval_s=0)
    hub = ExpertHub(settings, pack, open_backend("torch").experts(pack, pack.manifest.experts), MqttClient(settings, "hub", "hs"))
    hub._frame_s = 1.0  # one frame of a batch takes 1 s (long: the margins below must not depend on this box's speed)

    def job(fid: int, left_s: float | None) -> Job:
        now = time.monotonic()
        return Job(Part(frame(fid, pack.pack_id, None), "0-2", hub.current, now), 0, math.inf if left_s is None else now + left_s)

    def fid(j: Job) -> int:
        return int(j.part.frames.frame_ids[j.i])

    in_time = [job(0, 50.0), job(1, None), job(2, 40.0)]
    assert hub._in_time(in_time, time.monotonic()) == in_time  # all fit: arrival order kept
    assert hub._held == []
    jobs = [job(0, 2.5), job(1, 4.5), job(2, 3.5), job(3, 1.5), job(4, 1.2), job(5, None), job(6, 1.3), job(7, 1.1)]
    batch = hub._in_time(jobs, time.monotonic())
    assert [fid(j) for j in batch] == [5, 1, 2]  # a batch of 3 takes 3 s: frame 0 (2.5 s left) would not make it
    assert [fid(j) for j in hub._held] == [0, 3, 6, 4]  # max_batch of them, most time left first
    assert hub.stats.expired == 1  # frame 7, the one with the least time left beyond those
    hub._queue.put(Raw("x", b"", None, time.monotonic()))  # nothing decodable: only the held frames come back
    assert {fid(j) for j in hub._batch()} <= {0, 3, 6, 4}


def test_no_node_buys_priority_or_floods_the_others_out(tiny_pack):
    """A sender claiming 60 s left is cut to the hub's max_time_left_ms (counted); past its
    node_rate_limit a node's frames are refused at admission (counted); and when a batch cannot
    all be answered in time, nodes take turns: a flood's frames with more time left do not push
    another node's frame out of every batch."""
    from expert_hub.hub import Raw

    pack = Pack.load(tiny_pack)
    settings = HubSettings(pack=tiny_pack, hub_id="hf", max_batch=4, node_rate_limit=10, stats_interval_s=0)
    hub = ExpertHub(settings, pack, open_backend("torch").experts(pack, pack.manifest.experts), MqttClient(settings, "hub", "hf"))
    now = time.monotonic()
    flood = frames("flood", list(range(25)), pack.pack_id, IMAGE, deadline_ms=60_000.0)
    jobs = hub._admit(Raw(frames_topic("ate/v1", "0-2", "flood"), flood.encode(), None, now))
    assert len(jobs) == 10 and hub.stats.rate_limited == 15  # a 1 s burst of 10 frames/s
    assert hub.stats.capped == 10 and all(j.expires == now + 5.0 for j in jobs)  # 60 s claimed, 5 s kept
    cam = hub._admit(
        Raw(frames_topic("ate/v1", "0-2", "cam"), frames("cam", [7], pack.pack_id, IMAGE, deadline_ms=900.0).encode(), None, now)
    )
    hub._frame_s = 0.05  # one frame of a batch: 50 ms; a batch of 4 takes 200 ms
    batch = hub._in_time([*jobs, *cam], now + 0.6)  # the cam frame has 300 ms left, every flood frame 4.4 s
    assert [j.part.frames.node for j in batch] == ["flood", "cam", "flood", "flood"]
    assert len(hub._held) == 4 and hub.stats.expired == 3  # of 11 frames: 4 in the batch, 4 held, 3 dropped


def test_a_frame_that_was_held_on_its_way_is_known_as_late_whatever_the_clocks():
    """The hub counts a frame's deadline from its arrival, less what its message took beyond the
    quickest of its node's: with the edge's clock 100 s behind the hub's, fresh frames keep their
    whole deadline, and one that waited 10 s behind a stalled link (sent 10 s before it arrived)
    is known as late; the baseline follows a slow drift."""
    from expert_hub.transit import TransitClock

    clock = TransitClock()
    skew = -100.0  # the edge's clock is 100 s behind
    assert clock.delay("cam", 1000.0 + skew, 1000.003, 0.0) == 0.0  # the first message sets the baseline
    assert clock.delay("cam", 1001.0 + skew, 1001.001, 1.0) == 0.0  # quicker: a new baseline
    assert clock.delay("cam", 1002.0 + skew, 1002.004, 2.0) == pytest.approx(0.002)  # 3 ms jitter, less the 1 ms/s creep
    assert clock.delay("cam", 1003.0 + skew, 1013.001, 3.0) == pytest.approx(9.998)  # held 10 s on its way (less the creep)
    assert clock.delay("other", 5.0, 1014.0, 4.0) == 0.0  # each node its own baseline
    assert clock.delay("cam", 4000.0 + skew, 4000.5 + 1.0, 3000.0) == 0.0  # an hour later: a drift of 1 s followed


def test_the_hub_drops_a_frame_held_on_its_way_before_inference(tiny_pack):
    from expert_hub.hub import Raw

    pack = Pack.load(tiny_pack)
    settings = HubSettings(pack=tiny_pack, hub_id="ht", stats_interval_s=0)
    hub = ExpertHub(settings, pack, open_backend("torch").experts(pack, pack.manifest.experts), MqttClient(settings, "hub", "ht"))
    topic, now, wall = frames_topic("ate/v1", "0-2", "cam"), time.monotonic(), time.time()
    fresh = frames("cam", [1], pack.pack_id, IMAGE, deadline_ms=1000.0)
    fresh.t_sent = wall - 100.0  # the edge's clock 100 s behind
    held = frames("cam", [2], pack.pack_id, IMAGE, deadline_ms=1000.0)
    held.t_sent = wall - 100.0 - 10.0  # sent 10 s before it arrived
    for f in (fresh, held):
        hub._queue.put(Raw(topic, f.encode(), None, now, wall))
    batch = hub._batch()
    assert [int(j.part.frames.frame_ids[j.i]) for j in batch] == [1]
    assert hub.stats.expired == 1
