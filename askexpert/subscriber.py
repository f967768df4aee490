"""Listening without side effects: the one subscriber that the scorer, the tests and everyone who
waits for a component's status use. It publishes nothing: no status, no will, no retained message.

    Subscriber          keeps every message on some topic filters (topic, payload, arrival time)
    LabelSubscriber     a node's final labels, decoded, with waiting until N frames or idle
    wait_online         until a component's retained status says `online`

A durable subscriber (`session_expiry_s`) watches its session: one that comes back without its
session (session present false) has lost what was published while it was away, and says so; one
whose client id another client uses (a takeover: DISCONNECT 0x8E, or its session gone again and
again on the same broker, as Mosquitto 2.0 closes the old connection without a reason) gives up
and says why (`taken_over`), instead of kicking the other client off once a second forever. A
session missing after a failover to another broker of its list is not counted toward a takeover:
independent brokers do not share sessions, so that loss is said and the subscriber carries on.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import deque
from typing import Callable

import paho.mqtt.client as mqtt

from askexpert.log import get_logger
from askexpert.mqtt import SESSION_TAKEN_OVER, MqttClient
from askexpert.protocol import LabelMsg, ProtocolError, decode_label, labels_topic, status_topic
from askexpert.settings import CommonSettings

log = get_logger("askexpert.subscriber")
TAKEOVER_LOSSES = 2  # sessions lost within TAKEOVER_WINDOW_S: another client uses our client id
TAKEOVER_WINDOW_S = 60.0  # a broker restart without persistence loses a session once, not twice a minute
TAKEOVER_HINT = "give every consumer its own broker user (labels-<name>, docs/deploy.md) and its own client id"


class Subscriber:
    """Keeps every message on `topics` (QoS 1) in `raw`, unless `keep_raw` is off (subclasses that
    decode keep only what they decode). `session_expiry_s`: a persistent session, so that nothing is
    lost while away (a broker restart), as a consumer that must lose nothing would."""

    def __init__(
        self,
        settings: CommonSettings,
        *topics: str,
        ident: str | None = None,
        session_expiry_s: int | None = None,
        keep_raw: bool = True,
    ) -> None:
        self.client = MqttClient(settings, "listener", ident or secrets.token_hex(6), announce=False, session_expiry_s=session_expiry_s)
        self.raw: list[tuple[str, bytes]] = []
        self.keep_raw = keep_raw
        self.changed = threading.Condition()
        self.sessions_lost = 0  # reconnects of a durable subscriber that found no session on the broker
        self.taken_over: str | None = None  # why it gave up its connection (None: it did not)
        self._losses: deque[float] = deque(maxlen=TAKEOVER_LOSSES)  # sessions lost on the broker it was connected to before
        self._last_broker: str | None = None
        # layered on MqttClient's callbacks: components keep reconnecting, a consumer must not
        paho = self.client.client
        self._inner_connect, self._inner_disconnect = paho.on_connect, paho.on_disconnect
        paho.on_connect, paho.on_disconnect = self._on_connect, self._on_disconnect
        for topic in topics:
            self.client.subscribe(topic, self._on_message, qos=1)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags, reason_code, properties) -> None:
        self._inner_connect(client, userdata, flags, reason_code, properties)
        if reason_code.is_failure or self.client.session_expiry_s is None or flags.session_present:
            return
        broker, before = self.client.broker, self._last_broker
        self._last_broker = broker
        if self.client.connects <= 1:
            log.info("durable session started: no session on the broker for this client id", client_id=self.client.client_id)
            return
        self.sessions_lost += 1
        if broker != before:  # a failover: this broker may never have had the session, or lost it while we were away
            log.warning(
                "durable session not on this broker after a failover: what was published while moving is gone",
                client_id=self.client.client_id,
                broker=broker,
                previous=before,
                hint="a consumer that must lose nothing subscribes on every broker of an independent list and dedups (docs/deploy.md)",
            )
            return
        now = time.monotonic()
        self._losses.append(now)
        if len(self._losses) == TAKEOVER_LOSSES and now - self._losses[0] <= TAKEOVER_WINDOW_S:
            self._give_up(
                f"durable session lost {TAKEOVER_LOSSES} times within {TAKEOVER_WINDOW_S:.0f} s: another client uses this client id"
            )
            return
        log.error(
            "durable session lost: what was published while away is gone",
            client_id=self.client.client_id,
            times=self.sessions_lost,
            hint="a broker restarted without persistence, the session expired, or another client took this client id",
        )

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags, reason_code, properties) -> None:
        self._inner_disconnect(client, userdata, flags, reason_code, properties)
        if reason_code == SESSION_TAKEN_OVER and self.taken_over is None:
            self._give_up("the broker says another client took over this client id (0x8E)")

    def _give_up(self, why: str) -> None:
        """Stop reconnecting (each reconnect would kick the other client off, and lose this one's
        queue again), log it loudly and wake every waiter: `taken_over` says why."""
        self.taken_over = why
        user = self.client.settings.username
        log.error("subscriber taken over: not reconnecting", why=why, client_id=self.client.client_id, user=user, hint=TAKEOVER_HINT)
        self.client.client.disconnect()  # from paho's thread: its loop ends instead of reconnecting
        with self.changed:
            self.changed.notify_all()

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.accept(message.topic, message.payload)
            if self.keep_raw:
                self.raw.append((message.topic, message.payload))
            self.changed.notify_all()

    def accept(self, topic: str, payload: bytes) -> None:
        """Called for each message, under the lock, before it is kept: subclasses decode here."""

    def start(self, timeout: float = 10.0) -> "Subscriber":
        """Connect and wait for the SUBACKs: anything published after this returns is received."""
        self.client.start()
        if not self.client.wait_subscribed(timeout):
            self.client.stop()
            raise TimeoutError(f"no broker at {self.client.settings.broker} (or no SUBACK) after {timeout:.0f} s")
        return self

    def wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        """Until done() (called under the lock, after every message), timeout, or taken over
        (then False, and `taken_over` says why)."""
        with self.changed:
            self.changed.wait_for(lambda: done() or self.taken_over is not None, timeout)
            return bool(done())

    def stop(self) -> None:
        self.client.stop()


class LabelSubscriber(Subscriber):
    """One node's (or, with `+`, every node's) final labels, decoded; malformed ones are counted."""

    def __init__(self, settings: CommonSettings, node: str, **kw: object) -> None:
        super().__init__(settings, labels_topic(settings.prefix, node), keep_raw=False, **kw)  # type: ignore[arg-type]
        self.labels: list[LabelMsg] = []
        self.frame_ids: set[int] = set()
        self.malformed = 0

    def accept(self, topic: str, payload: bytes) -> None:
        try:
            msg = decode_label(payload)
        except ProtocolError:
            self.malformed += 1
            return
        self.labels.append(msg)
        self.frame_ids.add(msg.frame_id)

    @property
    def count(self) -> int:
        return len(self.frame_ids)

    def wait(
        self,
        frames: int | None = None,
        idle_timeout: float = 10.0,
        timeout: float | None = None,
        progress: Callable[[int], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> str:
        """Block until `frames` distinct frames are labelled, nothing came for idle_timeout seconds
        (counted from the last label, or from now when none comes), timeout, or stop() is true.
        Returns why it stopped: done, idle, timeout, stopped, or taken-over (another client took
        this durable subscriber's client id; `taken_over` says how it was seen)."""
        start = last = time.monotonic()
        seen = -1
        while True:
            with self.changed:
                self.changed.wait(0.2)
                n = len(self.frame_ids)
            now = time.monotonic()
            if n != seen:
                seen, last = n, now
                if progress:
                    progress(n)
            if frames is not None and n >= frames:
                return "done"
            if self.taken_over is not None:
                return "taken-over"
            if stop is not None and stop():
                return "stopped"
            if timeout is not None and now - start > timeout:
                return "timeout"
            if now - last > idle_timeout:
                return "idle"


def wait_online(
    settings: CommonSettings,
    role: str,
    ident: str,
    timeout: float = 60,
    alive: Callable[[], None] | None = None,
) -> None:
    """Block until a component's retained status says `online` (it serves from then on).

    `alive` is called while waiting and may raise to give up early (e.g. the process exited)."""

    def online(sub: Subscriber) -> bool:
        for _, payload in reversed(sub.raw):  # the newest status counts
            try:
                return json.loads(payload).get("state") == "online"
            except (ValueError, AttributeError):
                return False
        return False

    sub = Subscriber(settings, status_topic(settings.prefix, role, ident)).start(timeout)
    deadline = time.monotonic() + timeout
    try:
        while not sub.wait_for(lambda: online(sub), 0.2):
            if alive is not None:
                alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{role} {ident} did not come online within {timeout} s")
    finally:
        sub.stop()
