"""Adaptive tau: the controller on synthetic streams (injected clock, counts only), the hub's load
meter, the load message's validation, and the message over a real broker."""

from __future__ import annotations

import collections
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from askexpert import metrics
from askexpert.mqtt import MqttClient
from askexpert.protocol import HubLoad, ProtocolError, decode_hub_load, hub_load_filter, hub_load_topic
from askexpert.settings import CommonSettings
from edge_node.adaptive_tau import MAX_HUBS, AdaptiveTau
from expert_hub.load import LoadMeter

FPS, STEP = 100.0, 0.1  # the edge's frame rate and its batch period, in simulated seconds


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class SimHub:
    """A hub that answers `capacity` frames/s in arrival order, drops frames past the deadline
    (the edge's fallbacks) and publishes its load every second, as expert_hub does."""

    def __init__(self, capacity: float, deadline_s: float) -> None:
        self.capacity, self.deadline_s = capacity, deadline_s
        self.queue: collections.deque = collections.deque()
        self.credit, self.arrived, self.next_load = 0.0, 0, 1.0
        self.answered = self.fallbacks = 0

    def step(self, now: float, edges: list[AdaptiveTau], publish: bool = True) -> None:
        self.credit += self.capacity * STEP
        while self.queue and self.queue[0][0] + self.deadline_s < now:
            self.queue.popleft()[1].result(answered=False)
            self.fallbacks += 1
        while self.queue and self.credit >= 1:
            self.queue.popleft()[1].result(answered=True)
            self.credit -= 1
            self.answered += 1
        if not self.queue:
            self.credit = min(self.credit, 1.0)
        if now >= self.next_load - 1e-9:
            load = HubLoad("hub1", "pack1", self.capacity, float(self.arrived), len(self.queue), 1.0, 1.0)
            if publish:
                for e in edges:
                    e.observe(load)
            self.arrived, self.next_load = 0, self.next_load + 1.0


def run(edges: list[AdaptiveTau], clock: Clock, hub: SimHub | None, seconds: float, tau_op: float = 0.8, publish: bool = True) -> dict:
    """Feed each edge FPS uniform confidences per second; returns counts and the taus used."""
    rng = np.random.default_rng(int(clock.t))
    frames = offloads = 0
    taus: list[float] = []
    end = clock.t + seconds
    while clock.t < end - 1e-9:
        for e in edges:
            conf = rng.uniform(0, 1, int(FPS * STEP))
            tau = e.tau(tau_op)
            sent = conf < tau
            e.record(conf, sent)
            frames, offloads = frames + len(conf), offloads + int(sent.sum())
            taus.append(tau)
            if hub is not None:
                hub.queue.extend((clock.t, e) for _ in range(int(sent.sum())))
                hub.arrived += int(sent.sum())
        clock.t += STEP
        if hub is not None:
            hub.step(clock.t, edges, publish)
    return {"frames": frames, "offloads": offloads, "taus": taus}


def edge(clock: Clock, **kw) -> AdaptiveTau:
    args = {"tau_min": 0.0, "deadline_s": 0.5} | kw
    return AdaptiveTau("cam1", "pack1", args.pop("tau_min"), args.pop("deadline_s"), clock=clock, **args)


def test_target_rate_is_respected():
    clock = Clock()
    e = edge(clock, target_rate=20.0)
    run([e], clock, None, 3.0)  # settle
    out = run([e], clock, None, 20.0)
    assert out["offloads"] / out["frames"] == pytest.approx(20.0 / FPS, abs=0.03)
    assert all(t <= 0.8 for t in out["taus"])


def test_offloads_track_the_hubs_capacity_and_fallbacks_vanish():
    clock, hub = Clock(), SimHub(capacity=30.0, deadline_s=0.5)
    e = edge(clock)
    run([e], clock, hub, 10.0)  # the first seconds: the hub's first loads, a queue to drain
    fallbacks_before = hub.fallbacks
    out = run([e], clock, hub, 20.0)
    rate = out["offloads"] / 20.0
    assert 0.6 * 30 <= rate <= 30  # near HEADROOM * capacity, never above it for long
    assert hub.fallbacks - fallbacks_before <= 0.02 * out["offloads"]

    fixed_clock, fixed_hub = Clock(), SimHub(capacity=30.0, deadline_s=0.5)
    fixed = run([edge(fixed_clock, tau_min=0.8)], fixed_clock, fixed_hub, 30.0)  # tau_min = tau: no room to adapt
    assert set(fixed["taus"]) == {0.8}
    assert fixed_hub.fallbacks > 10 * hub.fallbacks


def test_a_fleet_shares_the_capacity():
    clock, hub = Clock(), SimHub(capacity=60.0, deadline_s=0.5)
    edges = [edge(clock) for _ in range(3)]
    run(edges, clock, hub, 10.0)
    before, fallbacks_before = hub.answered, hub.fallbacks
    out = run(edges, clock, hub, 20.0)
    assert 0.6 * 60 <= out["offloads"] / 20.0 <= 60
    assert hub.fallbacks - fallbacks_before <= 0.05 * out["offloads"]
    assert hub.answered - before >= 0.6 * 60 * 20 * 0.9


def test_a_starting_edge_grows_into_the_capacity_from_below():
    """Slow start: the hubs report their capacity (a retained load) when an edge starts. It must not
    flood them for the second their loads lag behind it: it grows into the spare capacity from
    below, and barely a frame falls back from its first second on."""
    clock, hub = Clock(), SimHub(capacity=10.0, deadline_s=0.5)
    e = edge(clock)
    e.observe(HubLoad("hub1", "pack1", 10.0, 0.0, 0, 0.0, 1.0))  # idle hubs, as retained before the start
    out = run([e], clock, hub, 3.0)
    assert hub.fallbacks <= 3  # an edge that offloads 8x what the hub answers, from its first batch on
    assert out["taus"][0] == 0.8 and min(out["taus"][1:4]) < 0.2  # the first batch, then the controller
    answered = hub.answered
    run([e], clock, hub, 5.0)
    assert hub.answered - answered >= 0.6 * 10.0 * 5  # and then it fills the capacity


def test_late_answers_stop_the_growth_before_anything_falls_back():
    """Answers later than half the deadline say the hubs are queueing (their loads may lag or
    overstate the capacity): the budget is then held at what was answered, before frames fall back."""

    def budget_after(latency_s: float) -> float:
        clock = Clock()
        e = edge(clock)
        e.observe(HubLoad("hub1", "pack1", 1000.0, 10.0, 0, 0.1, 1.0))  # a hub that says it has room
        rng = np.random.default_rng(0)
        for _ in range(30):  # 3 s at 100 frames/s; every offload answered, `latency_s` after capture
            conf = rng.uniform(0, 1, 10)
            sent = conf < e.tau(0.8)
            e.record(conf, sent)
            for _ in range(int(sent.sum())):
                e.result(answered=True, latency_s=latency_s)
            clock.t += STEP
            e.observe(HubLoad("hub1", "pack1", 1000.0, 10.0, 0, 0.1, 1.0))
        e.tau(0.8)
        return e.state["offload_budget_per_s"], e.state["slow_answers"]

    fast, slow = budget_after(0.05), budget_after(0.4)
    assert fast[1] == 0 and slow[1] > 0
    assert slow[0] < 0.6 * fast[0]  # held at the answered rate; with timely answers it may double (MAX_STEP)


def test_bounds_are_respected():
    clock, hub = Clock(), SimHub(capacity=5.0, deadline_s=0.5)
    e = edge(clock, tau_min=0.3)
    out = run([e], clock, hub, 15.0, tau_op=0.7)
    assert min(out["taus"]) == pytest.approx(0.3) and max(out["taus"]) == pytest.approx(0.7)
    assert all(0.3 <= t <= 0.7 for t in out["taus"])
    # the operator's tau wins when set below tau_min
    assert e.tau(0.2) == 0.2


def test_recovers_to_the_operators_tau_when_load_clears():
    clock, hub = Clock(), SimHub(capacity=20.0, deadline_s=0.5)
    e = edge(clock)
    out = run([e], clock, hub, 15.0)
    assert out["taus"][-1] < 0.5
    hub.capacity = 1000.0
    out = run([e], clock, hub, 10.0)
    assert out["taus"][-10:] == [0.8] * 10


def test_stale_hub_loads_are_ignored():
    clock, hub = Clock(), SimHub(capacity=10.0, deadline_s=5.0)
    e = edge(clock, deadline_s=5.0)
    out = run([e], clock, hub, 15.0)
    assert out["taus"][-1] < 0.5
    out = run([e], clock, None, 5.0)  # the hub goes silent: its last load expires
    assert out["taus"][-10:] == [0.8] * 10 and e.snapshot()["hubs"] == 0


def test_without_loads_fallbacks_hold_offloads_to_what_was_answered():
    clock, hub = Clock(), SimHub(capacity=10.0, deadline_s=0.5)
    e = edge(clock)
    run([e], clock, hub, 10.0, publish=False)
    fallbacks_before = hub.fallbacks
    out = run([e], clock, hub, 20.0, publish=False)
    assert out["offloads"] / 20.0 <= 2 * 10.0
    assert hub.fallbacks - fallbacks_before < out["offloads"] * 0.5
    assert min(out["taus"]) < 0.5


def _message(topic: str, payload: bytes) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, payload=payload)


def _load(**kw) -> bytes:
    return json.dumps(HubLoad("hub1", "pack1", 30.0, 10.0, 0, 0.5, 1.0).to_dict() | kw).encode()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"x" * 2000,
        b"\xff\xfe",
        b"[]",
        b"not json",
        _load(v=1),  # another protocol version
        _load(capacity=-1),
        _load(capacity=float("nan")),
        _load(arrivals=1e300),
        _load(arrivals="10"),
        _load(queue=-1),
        _load(queue=2**40),
        _load(queue=1.5),
        _load(busy=2),
        _load(interval_s=0),
        _load(interval_s=3600),
        _load(hub="bad hub"),
        _load(pack="../x"),
        _load(ts=True),
    ],
)
def test_decode_hub_load_rejects_malformed(payload):
    with pytest.raises(ProtocolError):
        decode_hub_load(payload)


def test_hostile_loads_are_rejected_counted_and_change_nothing():
    clock = Clock()
    e = edge(clock)
    topic = "ate/v1/hubs/hub1/load"
    good = decode_hub_load(_load())
    assert good.capacity == 30.0 and good.queue == 0

    def count(reason: str) -> float:
        return metrics.REJECTED.labels("edge", reason)._value.get()

    before = {r: count(r) for r in ("bad-load", "load-hub-mismatch", "too-many-hubs")}
    e.on_message(_message(topic, b"\x00garbage"))
    e.on_message(_message(topic, _load(capacity=float("inf"))))
    e.on_message(_message("ate/v1/hubs/hub1/load/x", _load()))
    e.on_message(_message(topic, _load(hub="hub2")))  # a payload naming another hub than its topic
    e.on_message(_message(topic, _load(pack="otherpack")))  # another pack's hub: ignored, not counted as hostile
    assert e.rejected == 4 and e.snapshot()["hubs"] == 0 and not e._loads
    assert count("bad-load") - before["bad-load"] == 3
    assert count("load-hub-mismatch") - before["load-hub-mismatch"] == 1

    for i in range(MAX_HUBS + 5):  # made-up hubs: memory stays bounded
        e.on_message(_message(f"ate/v1/hubs/h{i}/load", _load(hub=f"h{i}")))
    assert len(e._loads) == MAX_HUBS
    assert count("too-many-hubs") - before["too-many-hubs"] == 5
    e.on_message(_message("ate/v1/hubs/h0/load", b""))  # a hub that stopped clears its load
    assert "h0" not in e._loads


def test_load_meter_measures_capacity_and_demand():
    clock = Clock()
    meter = LoadMeter("hub1", "pack1", 1.0, clock=clock)
    assert meter.sample(0).capacity is None  # nothing answered yet
    for _ in range(50):
        meter.arrived()
    meter.served(40, 0.5)  # 40 frames in 0.5 s of work: 80 frames/s
    clock.t += 1.0
    load = meter.sample(queue=10)
    assert load.capacity == pytest.approx(80.0) and load.arrivals == pytest.approx(50.0)
    assert load.busy == pytest.approx(0.5) and load.queue == 10
    meter.served(10, 0.25)  # 40 frames/s this interval: smoothed
    clock.t += 1.0
    load = meter.sample(queue=0)
    assert 40.0 < load.capacity < 80.0 and load.arrivals == 0.0
    clock.t += 1.0
    assert meter.sample(queue=0).capacity == load.capacity  # an idle interval keeps the estimate
    assert decode_hub_load(json.dumps(load.to_dict()).encode()) == load


def test_load_messages_over_a_real_broker(broker):
    """A retained load reaches an edge that subscribes later; a bad one is counted; an empty one clears."""
    settings = CommonSettings(broker=broker.url)
    hub = MqttClient(settings, "hub", "hub1")
    cam = MqttClient(settings, "edge", "cam1")
    e = AdaptiveTau("cam1", "pack1", 0.0, 0.5)
    for c in (hub, cam):
        c.start()
        assert c.wait_connected(5)
    try:
        hub.publish(hub_load_topic(settings.prefix, "hub1"), _load(), qos=1, retain=True, expiry_s=3).wait_for_publish(5)
        hub.publish(hub_load_topic(settings.prefix, "hub9"), _load(), qos=1, retain=True, expiry_s=3).wait_for_publish(5)
        cam.subscribe(hub_load_filter(settings.prefix), e.on_message, qos=0)
        end = time.monotonic() + 5
        while (len(e._loads), e.rejected) != (1, 1) and time.monotonic() < end:
            time.sleep(0.02)
        assert list(e._loads) == ["hub1"] and e.rejected == 1  # hub9's payload names hub1
        hub.publish(hub_load_topic(settings.prefix, "hub1"), b"", qos=1, retain=True).wait_for_publish(5)
        end = time.monotonic() + 5
        while e._loads and time.monotonic() < end:
            time.sleep(0.02)
        assert not e._loads
    finally:
        hub.stop()
        cam.stop()


@pytest.mark.slow
@pytest.mark.timeout(1200)  # three processes importing torch on a busy box; no timing is asserted
def test_an_overloaded_hub_with_and_without_adaptive_tau(tiny_pack, broker):
    """A real hub that answers at most 20 frames/s, an edge that offloads up to 160/s: with a fixed tau most
    offloads fall back; with adaptive tau few do, and every frame still gets exactly one label."""
    import subprocess
    import sys
    from pathlib import Path

    from helpers import Collector, run_edge, stop, wait_hub_online

    n, tau_min = 1000, 0.1  # a 10-class softmax's top-1 is never below 0.1: at tau_min nothing is offloaded
    hub = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "bench" / "slow_hub.py"),
            "0.05",
            "run",
            "--pack",
            str(tiny_pack),
            "--broker",
            broker.url,
            "--hub-id",
            "slowhub",
            "--stats-interval-s",
            "0",
            "--threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs = {}
    try:
        wait_hub_online(broker.url, "slowhub", timeout=300)
        for mode, node in (("fixed", "camF"), ("adaptive", "camA")):
            sub = Collector(broker.url, f"ate/v1/nodes/{node}/labels", f"ate/v1/stats/edge/{node}")
            summary = run_edge(
                tiny_pack,
                broker.url,
                "--node-id",
                node,
                "--source",
                "dataset:fashion-mnist:test",
                "--max-frames",
                str(n),
                "--fps",
                "160",
                "--tau",
                "1.0",
                "--deadline-ms",
                "500",
                "--tau-mode",
                mode,
                "--tau-min",
                repr(tau_min),
                "--stats-interval-s",
                "1",
                "--threads",
                "1",
                timeout=600,
            )
            labels = sub.wait_labels(n)
            sub.close()
            stats = [json.loads(p) for t, p in sub.raw if "/stats/" in t]
            runs[mode] = (summary, labels, stats)
    finally:
        err = stop(hub)
    assert "Traceback" not in err, err[-3000:]

    for mode, (summary, labels, _) in runs.items():
        assert summary["frames"] == n
        assert sorted(m.frame_id for m in labels) == list(range(n)), f"{mode}: every frame exactly once"
        assert summary["fallback"] == sum(m.source == "edge-fallback" for m in labels)
    fixed, adaptive = runs["fixed"], runs["adaptive"]
    assert {m.tau for m in fixed[1]} == {1.0}
    assert fixed[0]["fallback"] >= 0.4 * n, "the hub is overloaded without adaptive tau"
    assert adaptive[0]["fallback"] <= 0.5 * fixed[0]["fallback"]
    assert adaptive[0]["expert"] >= 0.5 * fixed[0]["expert"], "adaptive tau still uses the hub"
    taus = [m.tau for m in adaptive[1]]
    assert all(tau_min <= t <= 1.0 for t in taus) and min(taus) < 1.0
    assert any(s.get("tau_mode") == "adaptive" and s["adaptive"]["hubs"] == 1 and s["tau_effective"] < 1.0 for s in adaptive[2])
    assert all(s["tau"] == 1.0 for s in adaptive[2]), "the operator's tau is not changed"
