"""paho-mqtt 2 (MQTT v5) client set up the way every component needs it.

- TCP_NODELAY on the socket: with Nagle on, a QoS 1 request/reply on loopback takes ~88 ms.
- A retained status on <prefix>/status/<role>/<id>: `starting` (models loading, engines
  building) until the component says `online`; a last will `offline` for crashes. Listeners
  (`announce=False`: the scorer, tests, waiting for a status) publish no status and no will, so
  they leave nothing retained on the broker.
- Subscriptions are remembered and renewed on every (re)connect, so a broker restart is survived.
- Connection runs in paho's network thread with automatic reconnect; a missing broker is retried.
- A broker list (`--broker mqtt://a:1883,mqtt://b:1883`): paho's own reconnect loop (backoff 1..5 s)
  does the retrying, and `on_pre_connect` (called before every new socket) points it at the next
  broker after a failed attempt or a lost connection. After a failover the client moves back to
  the first broker once it has answered for `broker_failback_s` (60 s; 0: never). paho re-sends unacknowledged QoS 1 messages
  (with DUP) on the new connection, so a consumer may see a label twice: it dedups on
  node/run/frame_id (README). The broker in use is in the status, `/healthz` and metrics.
- In-flight QoS 1 is capped at the Receive Maximum of each CONNACK (MQTT 5 flow control; a broker
  that enforces it disconnects a client that sends more, reason 0x93). paho does not read it.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import ssl
import threading
import time
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from askexpert import metrics
from askexpert.log import get_logger
from askexpert.protocol import FrameBatch, frames_topic, status_topic
from askexpert.settings import BrokerUrl, CommonSettings

Handler = Callable[[mqtt.MQTTMessage], None]
SESSION_TAKEN_OVER = 0x8E  # MQTT v5 DISCONNECT reason: a new connection with the same client id
RECEIVE_MAXIMUM_ABSENT = 65535  # MQTT 5, 3.2.2.3.3: no Receive Maximum in the CONNACK means 65,535
KEEPALIVE_S = 30
INFLIGHT_BEFORE_CONNACK = 20  # paho's default; what a first connection may have in flight before the broker says
log = get_logger("askexpert.mqtt")


class _PahoWarnings(logging.Handler):
    """paho's warnings and errors into the structured log. A stdlib logger at WARNING, not paho's
    on_log: with on_log set, paho formats a debug line for every packet (its v5 properties
    included) that would then be dropped. "Client is not connected", logged once per failed
    reconnect attempt, is left out: _on_connect_fail reports that."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Client is not connected"):
            return
        (log.error if record.levelno >= logging.ERROR else log.warning)("paho", message=message)


PAHO_LOG = logging.getLogger("askexpert.paho")
PAHO_LOG.setLevel(logging.WARNING)
PAHO_LOG.addHandler(_PahoWarnings())
PAHO_LOG.propagate = False


RESOLVE_HINT = (
    "use the broker's IP address (ATE_BROKER_HOST=192.168.1.20), or map the name with compose "
    "extra_hosts; mDNS names (*.local) rarely resolve inside bridge-network containers"
)


def unresolvable(host: str) -> str | None:
    """Why `host` does not resolve to an address (None: it resolves)."""
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        return str(exc)
    return None


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection there now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def status_payload(state: str, role: str, ident: str, **extra: object) -> bytes:
    return json.dumps({"state": state, "role": role, "id": ident, "ts": time.time(), **extra}).encode()


def match_filter(topic_filter: str) -> str:
    """The filter a delivered message's topic matches: `$share/<group>/<filter>` -> `<filter>`."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"malformed shared subscription {topic_filter!r}")
        return parts[2]
    return topic_filter


class MqttClient:
    """One broker connection for one component (role 'edge' or 'hub', id unique per role).

    `session_expiry_s` set: a persistent session (clean_start false) that the broker keeps, with
    its subscriptions and queued QoS 1 messages, for that long while the client is away."""

    def __init__(
        self,
        settings: CommonSettings,
        role: str,
        ident: str,
        status_extra: dict | None = None,
        *,
        announce: bool = True,
        session_expiry_s: int | None = None,
    ) -> None:
        self.settings = settings
        self.role, self.ident = role, ident
        self.announce, self.session_expiry_s = announce, session_expiry_s
        self._status_topic = status_topic(settings.prefix, role, ident)
        self._status_extra = dict(status_extra or {})
        self._subs: dict[str, tuple[int, Handler]] = {}
        self.state = "starting"  # what (re)connects announce; publish_status changes it
        self.connected = threading.Event()
        self.connects = 0
        # QoS>0 message ids the broker has not acknowledged yet. paho also calls on_publish for QoS 0
        # messages (when written), and may call it before publish() has returned the id: both are
        # told apart by id, so flush() waits for exactly the acknowledgements that matter.
        self._lock = threading.Condition()  # guards the id sets below and the subscription state
        self._unacked: set[int] = set()
        self._qos0: set[int] = set()
        self._early: set[int] = set()
        self._sub_mids: dict[int, str] = {}
        self._early_subacks: dict[int, list] = {}
        self.refused: dict[str, str] = {}  # subscriptions the broker refused (e.g. $share on a broker without it)
        self.instance = secrets.token_hex(4)  # tells this process apart from another on the same id
        self.id_conflicts = 0  # times another live process showed up under this component's id
        self._started = time.time()
        self.client_id = f"ate-{role}-{ident}"
        self.brokers: list[BrokerUrl] = settings.brokers
        self._at = 0  # index in self.brokers of the broker in use (or being tried)
        self._move_on = False  # the last attempt failed or the connection was lost: try the next broker
        self.failovers = 0  # times the client moved to another broker of the list
        metrics.MQTT_FAILOVERS.labels(role, ident)  # at 0 until the first: a rate over it exists from the start
        self.receive_maximum: dict[str, int] = {}  # per broker URL, from its last CONNACK
        self._session: dict = {}  # connect_async's session arguments (persistent session), for every broker
        self._expiries: dict[int, Properties] = {}
        self.client = self._paho_client()
        self._stopping = threading.Event()
        self._failback: threading.Thread | None = None
        self._unreachable_since: float | None = None
        self._unreachable_logged = 0.0

    def _paho_client(self) -> mqtt.Client:
        """The paho client with credentials, TLS, the will, reconnect backoff and our callbacks."""
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        if self.settings.username:
            c.username_pw_set(self.settings.username, self.settings.password)
        if self.settings.broker_tls:
            c.tls_set(
                ca_certs=str(self.settings.tls_ca) if self.settings.tls_ca else None,
                certfile=str(self.settings.tls_cert) if self.settings.tls_cert else None,
                keyfile=str(self.settings.tls_key) if self.settings.tls_key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if self.announce:
            c.will_set(self._status_topic, status_payload("offline", self.role, self.ident, instance=self.instance), qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        c.max_inflight_messages_set(INFLIGHT_BEFORE_CONNACK)
        c.on_pre_connect = self._on_pre_connect
        c.on_socket_open = self._on_socket_open
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_connect_fail = self._on_connect_fail
        c.enable_logger(PAHO_LOG)
        return c

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Connect in the background; returns at once, retries until the broker answers."""
        if self.announce:
            self.subscribe(self._status_topic, self._on_own_status)
        log.info("mqtt connecting", brokers=self.settings.broker, role=self.role, id=self.ident)
        if self.session_expiry_s is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            self._session = {"clean_start": False, "properties": props}
        first = self.brokers[0]
        self.client.connect_async(first.host, first.port, keepalive=KEEPALIVE_S, **self._session)
        self.client.loop_start()
        if len(self.brokers) > 1 and self.settings.broker_failback_s > 0:
            self._failback = threading.Thread(target=self._watch_first, name="mqtt-failback", daemon=True)
            self._failback.start()

    def _watch_first(self) -> None:
        """After a failover, back to the first broker of the list once it has answered (a TCP
        connect) for broker_failback_s without a miss: a broker that flaps does not pull clients
        back and forth, and a list's first entry (the site broker, the cluster's nearest node)
        gets its clients back."""
        period = self.settings.broker_failback_s
        since: float | None = None
        while not self._stopping.wait(max(0.1, period / 4)):
            first = self.brokers[0]
            if self._at == 0 or not self.connected.is_set() or not reachable(first.host, first.port):
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= period:
                self._move_to_first()
                since = None

    def _move_to_first(self) -> None:
        """A clean disconnect (no will) and paho's loop started again on the first broker; what was
        queued at QoS 1 goes out there."""
        first, before = self.brokers[0], self.broker
        log.info("mqtt moving back to the first broker", broker=first.url, previous=before)
        self._say_offline(moved_to=first.url)
        self.client.disconnect()
        self.client.loop_stop()
        if self._stopping.is_set():
            return
        self._at, self._move_on = 0, False
        self.failovers += 1
        metrics.MQTT_FAILOVERS.labels(self.role, self.ident).inc()
        self.client.connect_async(first.host, first.port, keepalive=KEEPALIVE_S, **self._session)
        self.client.loop_start()

    @property
    def broker(self) -> str:
        """The URL of the broker in use (or being tried)."""
        return self.brokers[self._at].url

    def broker_report(self) -> dict:
        """For /healthz and the stats: which broker, how often the client moved, the flow-control cap."""
        return {"broker": self.broker, "broker_failovers": self.failovers, "receive_maximum": self.receive_maximum.get(self.broker)}

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Connected, and every SUBSCRIBE acknowledged: what is published from now on reaches us."""
        deadline = time.monotonic() + timeout
        if not self.connected.wait(timeout):
            return False
        with self._lock:
            return self._lock.wait_for(lambda: not self._sub_mids, max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Say `offline` (retained), then disconnect cleanly: the will is only for crashes."""
        self._stopping.set()
        if self._failback is not None:
            self._failback.join(timeout=5)
        self._say_offline()
        self.client.disconnect()
        self.client.loop_stop()

    def _say_offline(self, **extra: object) -> None:
        """A retained `offline` on the broker in use, before a clean disconnect (which sends no
        will): left behind on a broker the client moves away from, its `online` would stay there
        for good (`moved_to` names where the client went)."""
        if not (self.announce and self.connected.is_set()):
            return
        info = self.publish(
            self._status_topic, status_payload("offline", self.role, self.ident, instance=self.instance, **extra), retain=True
        )
        try:
            info.wait_for_publish(timeout=2)
        except (RuntimeError, ValueError):
            pass

    # ------------------------------------------------------------ messaging
    def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Register a handler; it is (re)subscribed on every connect. Handlers must not block.

        A shared subscription (`$share/<group>/<filter>`) delivers messages under their real topic,
        which paho matches against the callbacks' filters: the handler is registered for `<filter>`."""
        self._subs[topic_filter] = (qos, handler)
        self.client.message_callback_add(match_filter(topic_filter), self._guard(handler))
        if self.connected.is_set():
            self._subscribe(topic_filter, qos)

    def _subscribe(self, topic_filter: str, qos: int) -> None:
        _, mid = self.client.subscribe(topic_filter, qos=qos)
        with self._lock:  # the SUBACK may be handled before subscribe() has returned its mid
            early = self._early_subacks.pop(mid, None)
            if early is None:
                self._sub_mids[mid] = topic_filter
                return
        self._suback(topic_filter, early)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, expiry_s: int | None = None) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=self._expiry(expiry_s) if expiry_s else None)
        with self._lock:
            if info.mid in self._early:  # already written (QoS 0) or acknowledged
                self._early.discard(info.mid)
            elif qos:
                self._unacked.add(info.mid)
            elif len(self._qos0) < 65536:  # one that is never written (disconnected) is never reported
                self._qos0.add(info.mid)
        return info

    def _expiry(self, expiry_s: int) -> Properties:
        """The Message Expiry property, built once per value (what a message would otherwise pay)."""
        props = self._expiries.get(expiry_s)
        if props is None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = max(1, int(expiry_s))
            self._expiries[expiry_s] = props
        return props

    def publish_frames(self, prefix: str, expert: str, frames: FrameBatch, expiry_s: int | None = None) -> mqtt.MQTTMessageInfo:
        """Offload frames to `expert` as the wire protocol says: QoS 0, the deadline in the frames
        (a frame lost with a connection falls back at its deadline, as a late one does; paho
        never re-sends one its edge gave up on), an MQTT expiry only where they carry no deadline
        (`expiry_s`). One definition for the edge and the benchmarks that stand in for it."""
        return self.publish(frames_topic(prefix, expert, frames.node), frames.encode(), qos=0, expiry_s=expiry_s)

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged every QoS>0 message published so far."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._unacked, timeout)

    def unacknowledged(self) -> int:
        """QoS>0 messages published and not yet acknowledged by the broker."""
        with self._lock:
            return len(self._unacked)

    def update_status(self, **fields: object) -> None:
        """Change what the status says from now on (every reconnect announces it too), and announce it."""
        self._status_extra.update(fields)
        self.publish_status(self.state)

    def publish_status(self, state: str, **extra: object) -> None:
        """Announce a state (retained); it is also what every later reconnect announces."""
        self.state = state
        extra = {**self._status_extra, "broker": self.broker, **extra}
        payload = status_payload(state, self.role, self.ident, instance=self.instance, **extra)
        self.publish(self._status_topic, payload, retain=True)

    # ------------------------------------------------------------ paho callbacks
    @staticmethod
    def _on_socket_open(client: mqtt.Client, userdata: object, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # e.g. a websocket wrapper
            pass

    def _on_pre_connect(self, client: mqtt.Client, userdata: object) -> None:
        """Before every new socket (paho's reconnect loop): after a failed attempt or a lost
        connection, the next broker of the list; paho's backoff spaces the attempts."""
        if not self._move_on or len(self.brokers) < 2:
            self._move_on = False
            return
        self._move_on = False
        before = self.broker
        self._at = (self._at + 1) % len(self.brokers)
        nxt = self.brokers[self._at]
        # paho's way to another broker (eclipse-paho/paho.mqtt.python#297): connect_async again. The old
        # socket is closed; reconnect() goes on to open this one; in-flight QoS 1 is re-sent on it.
        client.connect_async(nxt.host, nxt.port, keepalive=KEEPALIVE_S, **self._session)
        self.failovers += 1
        metrics.MQTT_FAILOVERS.labels(self.role, self.ident).inc()
        log.info("mqtt trying the next broker", broker=nxt.url, previous=before)

    def _cap_inflight(self, cap: int) -> None:
        """In-flight QoS 1 limit. paho's setter refuses while a connection is open and paho never
        reads Receive Maximum (eclipse-paho/paho.mqtt.python#492, #698), so its field is set here,
        from the CONNACK callback, before paho re-sends what was in flight."""
        self.client._max_inflight_messages = max(1, cap)
        metrics.MQTT_INFLIGHT_CAP.labels(self.role, self.ident).set(max(1, cap))

    def _on_connect(self, client: mqtt.Client, userdata: object, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._move_on = True
            log.error("mqtt connect refused", reason=str(reason_code), broker=self.broker)
            return
        self.connects += 1
        self._unreachable_since = None
        self.receive_maximum[self.broker] = getattr(properties, "ReceiveMaximum", RECEIVE_MAXIMUM_ABSENT)
        self._cap_inflight(self.receive_maximum[self.broker])
        for b in self.brokers:
            metrics.MQTT_BROKER.labels(self.role, self.ident, b.url).set(1 if b.url == self.broker else 0)
        shared_ok = getattr(properties, "SharedSubscriptionAvailable", 1) != 0  # absent: available (MQTT 5)
        for topic_filter, (qos, _) in self._subs.items():
            if topic_filter.startswith("$share/") and not shared_ok:
                self.refused[topic_filter] = "the broker's CONNACK says shared subscriptions are not available"
                log.error(
                    "mqtt subscription not possible",
                    topic_filter=topic_filter,
                    reason=self.refused[topic_filter],
                    hint="run one hub per expert set without --share-group, or use a broker with shared subscriptions",
                )
                continue
            self._subscribe(topic_filter, qos)
        if self.announce:
            self.publish_status(self.state)
        self.connected.set()
        log.info("mqtt connected", broker=self.broker, reconnect=self.connects > 1, receive_maximum=self.receive_maximum[self.broker])

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags, reason_code, properties) -> None:
        """paho re-queues what was in flight (up to the cap) right after this, before the next
        CONNACK: the smallest Receive Maximum seen so far keeps that burst within any broker's."""
        self.connected.clear()
        self._move_on = True
        metrics.MQTT_BROKER.labels(self.role, self.ident, self.broker).set(0)
        self._cap_inflight(min(self.receive_maximum.values(), default=INFLIGHT_BEFORE_CONNACK))
        if reason_code == SESSION_TAKEN_OVER:  # brokers that say so; Mosquitto 2.0 just closes the socket
            self._id_conflict("the broker says another client took over this client id")
        elif reason_code.is_failure:
            log.warning("mqtt connection lost; reconnecting", reason=str(reason_code))
        else:
            log.info("mqtt disconnected", reason=str(reason_code))

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code, properties) -> None:
        with self._lock:
            if mid in self._qos0:
                self._qos0.discard(mid)
            elif mid in self._unacked:
                self._unacked.discard(mid)
                self._lock.notify_all()
            else:
                self._early.add(mid)

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        """Say so while the broker cannot be reached (at once, then every 30 s), instead of silence;
        a host name that does not resolve is named as such (mDNS names in bridge-network containers)."""
        now = time.monotonic()
        self._move_on = True
        self._unreachable_since = self._unreachable_since or now
        if now - self._unreachable_logged >= 30:
            self._unreachable_logged = now
            host, for_s = self.brokers[self._at].host, round(now - self._unreachable_since, 1)
            if (why := unresolvable(host)) is not None:
                log.error(
                    "mqtt broker host name does not resolve; retrying",
                    broker=self.broker,
                    brokers=self.settings.broker,
                    host=host,
                    error=why,
                    for_s=for_s,
                    hint=RESOLVE_HINT,
                )
            else:
                log.warning("mqtt broker unreachable; retrying", broker=self.broker, brokers=self.settings.broker, for_s=for_s)

    def _on_own_status(self, message: mqtt.MQTTMessage) -> None:
        """A status on our own topic from another instance, made since this one started (its
        announcements, or the will the broker publishes when it is kicked off): two processes share
        an id and, with one client id, kick each other off the broker once a second, forever. A
        previous incarnation's status and will are older than our start: not a conflict."""
        try:
            other = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(other, dict) or other.get("instance") in (None, self.instance):
            return
        ts = other.get("ts")
        if isinstance(ts, (int, float)) and ts >= self._started:
            self._id_conflict("another process announces itself under this id")

    def _id_conflict(self, why: str) -> None:
        self.id_conflicts += 1
        log.error(f"{why}: give every component its own id (--node-id / --hub-id)", client_id=self.client_id, times=self.id_conflicts)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes, properties) -> None:
        with self._lock:
            topic_filter = self._sub_mids.pop(mid, None)
            if topic_filter is None:
                self._early_subacks[mid] = list(reason_codes)
                return
            self._lock.notify_all()
        self._suback(topic_filter, reason_codes)

    def _suback(self, topic_filter: str, reason_codes) -> None:
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:  # the component must not look healthy while it receives nothing
            self.refused[topic_filter] = str(bad[0])
            log.error(
                "mqtt subscription refused by the broker",
                topic_filter=topic_filter,
                reason=str(bad[0]),
                hint="shared subscriptions ($share/...) need a broker that supports them",
            )
        else:
            self.refused.pop(topic_filter, None)

    @staticmethod
    def _guard(handler: Handler) -> Handler:
        """A handler that raises must not kill paho's network thread."""

        def run(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
            try:
                handler(message)
            except Exception:  # logged, counted by the handler's owner
                log.exception("mqtt handler failed", topic=message.topic)

        return run
