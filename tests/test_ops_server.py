"""The ops surface: /metrics (Prometheus text), /healthz (200 / 503), stats on MQTT."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from askexpert import metrics
from askexpert.ops import StatsPublisher, start_ops_server


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


@pytest.fixture
def ops_state():
    state = {"ok": True, "mqtt": "connected"}
    ops = start_ops_server(0, lambda: dict(state), host="127.0.0.1")
    yield ops, state
    ops.stop()


def test_metrics_endpoint_serves_the_metric_names(ops_state):
    ops, _ = ops_state
    assert ops.port > 0
    metrics.FRAMES.labels(node="t-ops").inc(3)
    metrics.OFFLOADS.labels(node="t-ops", expert="0-1").inc()
    metrics.LABELS.labels(node="t-ops", source="edge-fallback").inc()
    metrics.DROPS.labels(component="edge", reason="t-ops").inc()
    metrics.QUEUE_DEPTH.labels(component="hub", queue="0-1").set(4)
    metrics.BATCH_SIZE.labels(component="hub", model="0-1").observe(8)
    metrics.INFER_MS.labels(component="hub", model="0-1").observe(3.0)
    metrics.LABEL_LATENCY_MS.labels(node="t-ops", source="edge").observe(1.5)
    metrics.TAU.labels(node="t-ops").set(0.8)
    code, ctype, body = _get(f"http://127.0.0.1:{ops.port}/metrics")
    text = body.decode()
    assert code == 200 and ctype.startswith("text/plain")
    for name in (
        'ate_frames_total{node="t-ops"} 3.0',
        'ate_offloads_total{expert="0-1",node="t-ops"} 1.0',
        'ate_labels_total{node="t-ops",source="edge-fallback"} 1.0',
        "ate_dropped_frames_total",
        'ate_queue_depth{component="hub",queue="0-1"} 4.0',
        "ate_batch_size_bucket",
        "ate_inference_ms_bucket",
        "ate_label_latency_ms_bucket",
        'ate_tau{node="t-ops"} 0.8',
        "ate_rejected_messages_total",
    ):
        assert name in text, name


def test_healthz_follows_the_health_callable(ops_state):
    ops, state = ops_state
    code, ctype, body = _get(f"http://127.0.0.1:{ops.port}/healthz")
    assert code == 200 and ctype == "application/json"
    assert json.loads(body) == {"ok": True, "mqtt": "connected"}
    state.update(ok=False, mqtt="disconnected")
    code, _, body = _get(f"http://127.0.0.1:{ops.port}/healthz")
    assert code == 503 and json.loads(body)["mqtt"] == "disconnected"
    assert _get(f"http://127.0.0.1:{ops.port}/nope")[0] == 404


def test_healthz_is_503_when_the_callable_raises():
    def broken() -> dict:
        raise RuntimeError("model not loaded")

    ops = start_ops_server(0, broken, host="127.0.0.1")
    try:
        code, _, body = _get(f"http://127.0.0.1:{ops.port}/healthz")
        assert code == 503 and "model not loaded" in json.loads(body)["error"]
    finally:
        ops.stop()


class _FakeClient:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []
        self.event = threading.Event()

    def publish(self, topic, payload, qos=0, retain=False, expiry_s=None):
        self.sent.append((topic, payload, qos, retain))
        if len(self.sent) >= 2:
            self.event.set()


def test_stats_publisher_publishes_json_periodically():
    client = _FakeClient()
    calls = iter(range(1000))
    pub = StatsPublisher(client, "ate/v1/stats/edge/cam1", lambda: {"frames": next(calls)}, interval_s=0.05).start()
    try:
        assert client.event.wait(5)
    finally:
        pub.stop()
    topic, payload, qos, retain = client.sent[0]
    data = json.loads(payload)
    assert topic == "ate/v1/stats/edge/cam1" and data["frames"] == 0 and "ts" in data and not retain
    assert json.loads(client.sent[1][1])["frames"] == 1


def test_stats_publisher_survives_a_failing_stats_callable():
    client = _FakeClient()
    pub = StatsPublisher(client, "t", lambda: 1 / 0, interval_s=1)
    assert pub.publish_once() is False and client.sent == []
    with pytest.raises(ValueError):
        StatsPublisher(client, "t", dict, interval_s=0)
