"""Runtime tau over MQTT: valid values applied and published retained, bad ones rejected."""

from __future__ import annotations

import json
import queue
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from askexpert import metrics
from askexpert.mqtt import MqttClient
from askexpert.protocol import tau_set_topic, tau_topic
from askexpert.settings import CommonSettings
from edge_node.tau_control import TauControl, TauError, parse_tau


@pytest.mark.parametrize(
    "payload, want",
    [(b"0.7", 0.7), (b" 0.25\n", 0.25), (b"0", 0.0), (b"1", 1.0), (b"1.0", 1.0), (b'{"tau": 0.5}', 0.5), ("0.9", 0.9)],
)
def test_parse_tau_accepts_numbers_in_unit_interval(payload, want):
    assert parse_tau(payload) == pytest.approx(want)


@pytest.mark.parametrize(
    "payload",
    [
        b"abc",
        b"-1",
        b"2",
        b"NaN",
        b"nan",
        b"Infinity",
        b"inf",
        b"",
        b"  ",
        b"true",
        b"null",
        b"[0.5]",
        b'{"tau": "x"}',
        b'{"tau": 0.5, "x": 1}',
        b"\xff\xfe",
        b"0." + b"1" * 400,
        b"1.0000001",
    ],
)
def test_parse_tau_rejects_everything_else(payload):
    with pytest.raises(TauError):
        parse_tau(payload)


def _rejected() -> float:
    return metrics.REJECTED.labels(component="edge", reason="bad-tau")._value.get()


class _Watcher:
    """A plain paho client: publishes tau/set and collects what arrives on tau."""

    def __init__(self, port: int, topic: str) -> None:
        self.q: queue.Queue = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.q.put((m.payload, m.retain))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(topic, qos=1)[0]

    def next(self, timeout: float = 5.0) -> tuple[dict, bool]:
        payload, retain = self.q.get(timeout=timeout)
        return json.loads(payload), retain

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _wait(cond, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_tau_set_over_mqtt(broker):
    settings = CommonSettings(broker=broker.url)
    client = MqttClient(settings, "edge", "camT")
    changes: list[tuple[float, float]] = []
    tau = TauControl(client, settings.prefix, "camT", 0.8, on_change=lambda new, old: changes.append((new, old)))
    client.start()
    assert client.wait_connected(5)
    tau.start()
    assert metrics.TAU.labels(node="camT")._value.get() == 0.8
    assert client.flush(5)  # the retained value is at the broker before anyone subscribes: else it arrives live

    first = _Watcher(broker.port, tau_topic(settings.prefix, "camT"))
    msg, retained = first.next()
    assert msg["tau"] == 0.8 and msg["source"] == "initial" and retained

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    set_topic = tau_set_topic(settings.prefix, "camT")
    time.sleep(0.2)  # the edge's subscription is in place
    pub.publish(set_topic, b"0.7", qos=1).wait_for_publish(5)
    msg, _ = first.next()
    assert msg["tau"] == 0.7 and msg["source"] == "mqtt"
    assert tau.value == 0.7 and changes == [(0.7, 0.8)]
    assert metrics.TAU.labels(node="camT")._value.get() == 0.7

    before = _rejected()
    for bad in (b"abc", b"-1", b"2", b"NaN"):
        pub.publish(set_topic, bad, qos=1).wait_for_publish(5)
    assert _wait(lambda: tau.rejected == 4)
    assert _rejected() - before == 4
    assert tau.value == 0.7 and changes == [(0.7, 0.8)]
    assert first.q.empty()  # nothing republished for rejected values

    late = _Watcher(broker.port, tau_topic(settings.prefix, "camT"))  # a newcomer sees the retained value
    msg, retained = late.next()
    assert msg["tau"] == 0.7 and retained

    for c in (first, late):
        c.close()
    pub.disconnect()
    pub.loop_stop()
    client.stop()


def test_bad_initial_tau_is_refused():
    class Dummy:
        def subscribe(self, *a, **k): ...
        def publish(self, *a, **k): ...

    with pytest.raises(TauError):
        TauControl(Dummy(), "ate/v1", "x", 1.5)
