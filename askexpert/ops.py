"""The operational surface of a component: Prometheus `/metrics`, `/healthz`, and stats on MQTT.

    ops = start_ops_server(settings.metrics_port, health)   # only when metrics_port != 0
    ...
    ops.stop()

`health()` returns a JSON-able dict; the endpoint answers 200 when it holds `"ok": True`
(or `"healthy": True`) and 503 otherwise, with the dict as the body, so a container
healthcheck (`curl -f http://127.0.0.1:PORT/healthz`) and a human read the same thing.
Port 0 binds a free port (tests); whether 0 means "off" is the caller's decision.

`StatsPublisher` publishes a JSON dict from a callable every N seconds on a topic
(`protocol.stats_topic(prefix, role, id)`) through `MqttClient.publish`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from askexpert.log import get_logger

log = get_logger("askexpert.ops")

HealthFn = Callable[[], dict]


def is_healthy(report: dict) -> bool:
    return bool(report.get("ok", report.get("healthy", False)))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return str(obj)


def _make_handler(health: HealthFn, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ate-ops/1"

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # http.server naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/health", "/readyz"):
                try:
                    report = dict(health())
                except Exception as exc:  # a failing probe is an unhealthy component
                    report = {"ok": False, "error": f"health check raised: {exc!r}"}
                code = 200 if is_healthy(report) else 503
                body = json.dumps(report, default=_json_default).encode()
                self._send(code, body, "application/json")
            elif path == "/":
                self._send(200, b"ask-the-expert ops: /metrics /healthz\n", "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        do_HEAD = do_GET

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few s: keep quiet
            pass

    return Handler


@dataclass
class OpsServer:
    """A running ops HTTP server: `.port` is the bound port, `.stop()` shuts it down."""

    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = self.server.server_address[0]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_ops_server(
    port: int,
    health: HealthFn,
    host: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
) -> OpsServer:
    """Serve /metrics and /healthz on host:port in a daemon thread (port 0 = any free port)."""
    server = ThreadingHTTPServer((host, port), _make_handler(health, registry))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"ops-http-{port}", daemon=True)
    thread.start()
    ops = OpsServer(server, thread)
    log.info("ops server listening", metrics=f"{ops.url}/metrics", healthz=f"{ops.url}/healthz")
    return ops


class StatsPublisher:
    """Every `interval_s`, publish `json(stats())` on `topic` (QoS 0, not retained by default;
    a retained one may expire after `expiry_s`, so a dead publisher's last word does not linger).

    `client` is an askexpert.mqtt.MqttClient (anything with `.publish(topic, payload, qos=..)`).
    A stats callable that raises is logged and skipped; the thread goes on.
    """

    def __init__(
        self,
        client: Any,
        topic: str,
        stats: Callable[[], dict],
        interval_s: float,
        qos: int = 0,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0 (callers skip the publisher when stats are off)")
        self.client, self.topic, self.stats = client, topic, stats
        self.interval_s, self.qos, self.retain, self.expiry_s = interval_s, qos, retain, expiry_s
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-publisher", daemon=True)

    def start(self) -> "StatsPublisher":
        self._thread.start()
        return self

    def publish_once(self) -> bool:
        try:
            data = {"ts": time.time(), **dict(self.stats())}
            self.client.publish(
                self.topic, json.dumps(data, default=_json_default).encode(), qos=self.qos, retain=self.retain, expiry_s=self.expiry_s
            )
        except Exception:  # stats must never take a component down
            log.exception("stats publish failed", topic=self.topic)
            return False
        self.published += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.publish_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
