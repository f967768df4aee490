"""Runtime confidence threshold (tau) over MQTT.

An operator publishes a number in [0, 1] on `<prefix>/nodes/<node>/tau/set`, as a JSON number
(`0.7`), plain text (`0.7`) or `{"tau": 0.7}`. A valid value is applied at once (the gate reads
`TauControl.value` per frame), logged, exported as the `ate_tau` gauge, and the node's current
value is published retained on `<prefix>/nodes/<node>/tau` as JSON `{"tau": .., "node": ..,
"ts": .., "source": "initial" | "mqtt"}`. Anything else (text, NaN, inf, out of range, booleans,
oversized payloads) is rejected: counted in `ate_rejected_messages_total{component="edge",
reason="bad-tau"}`, logged, and the old value stays.

    tau = TauControl(client, settings.prefix, settings.node_id, settings.tau)
    tau.start()            # subscribes; publishes the retained current value
    ...  conf >= tau.value ...
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any, Callable

from askexpert import metrics
from askexpert.log import get_logger
from askexpert.protocol import tau_set_topic, tau_topic

log = get_logger("edge_node.tau")

MAX_PAYLOAD = 256


class TauError(ValueError):
    """A tau/set payload that is not a number in [0, 1]."""


def parse_tau(payload: bytes | str) -> float:
    """b'0.7', b' 0.7\\n', b'{"tau": 0.7}' -> 0.7; TauError for anything else."""
    if isinstance(payload, (bytes, bytearray)):
        if len(payload) > MAX_PAYLOAD:
            raise TauError(f"payload of {len(payload)} bytes is too long")
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TauError("payload is not UTF-8") from exc
    else:
        text = payload
    text = text.strip()
    if not text:
        raise TauError("empty payload")
    value: Any
    try:
        value = json.loads(text)
    except ValueError:
        value = text  # plain text: float() below decides
    if isinstance(value, dict):
        if set(value) != {"tau"}:
            raise TauError('a JSON object must be exactly {"tau": <number>}')
        value = value["tau"]
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise TauError(f"not a number: {text[:40]!r}")
    try:
        tau = float(value)
    except (TypeError, ValueError) as exc:
        raise TauError(f"not a number: {text[:40]!r}") from exc
    if not math.isfinite(tau):
        raise TauError(f"not a finite number: {text[:40]!r}")
    if not 0.0 <= tau <= 1.0:
        raise TauError(f"tau {tau} is outside [0, 1]")
    return tau


class TauControl:
    """Thread-safe holder of the node's tau, settable over MQTT.

    `client` is an askexpert.mqtt.MqttClient. `on_change(new, old)` is called (in paho's network
    thread, so keep it short) after every accepted change.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        node: str,
        initial: float,
        on_change: Callable[[float, float], None] | None = None,
    ) -> None:
        self._value = parse_tau(str(initial))
        self._lock = threading.Lock()
        self.client, self.prefix, self.node = client, prefix, node
        self.on_change = on_change
        self.set_topic = tau_set_topic(prefix, node)
        self.topic = tau_topic(prefix, node)
        self.accepted = 0
        self.rejected = 0
        metrics.TAU.labels(node=node).set(self._value)

    @property
    def value(self) -> float:
        return self._value  # a float read is atomic; the lock orders writers and publishes

    def start(self) -> "TauControl":
        self.client.subscribe(self.set_topic, self._on_message, qos=1)
        self.publish("initial")
        log.info("tau control ready", node=self.node, tau=self._value, set_topic=self.set_topic)
        return self

    def set(self, tau: float, source: str = "api") -> float:
        """Apply a value (validated like an MQTT one); returns the new tau."""
        tau = parse_tau(str(tau))
        with self._lock:
            old, self._value = self._value, tau
            metrics.TAU.labels(node=self.node).set(tau)
            self.accepted += 1
            self.publish(source)
        log.info("tau changed", node=self.node, old=old, new=tau, source=source)
        if self.on_change is not None:
            try:
                self.on_change(tau, old)
            except Exception:  # a hook must not undo a valid change
                log.exception("tau on_change hook failed")
        return tau

    def publish(self, source: str = "mqtt") -> None:
        payload = json.dumps({"tau": self._value, "node": self.node, "ts": time.time(), "source": source})
        self.client.publish(self.topic, payload.encode(), qos=1, retain=True)

    def _on_message(self, message: Any) -> None:
        try:
            tau = parse_tau(message.payload)
        except TauError as exc:
            self.rejected += 1
            metrics.REJECTED.labels(component="edge", reason="bad-tau").inc()
            log.warning(
                "tau rejected",
                node=self.node,
                topic=message.topic,
                error=str(exc),
                payload=bytes(message.payload[:64]).decode("utf-8", "replace"),
                tau=self._value,
            )
            return
        self.set(tau, source="mqtt")
