"""Broker lists: a client takes the first broker that answers and moves to the next on loss, with
the pipeline going on; on a cluster (two aedes nodes on Redis) a kill -9 of the hub's node loses
no frame and duplicates none. Flow control: in-flight QoS 1 follows the CONNACK's Receive Maximum."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request

import pytest
from helpers import AedesCluster, start_hub, stop

from askexpert.localbroker import Broker, edge_args, free_port, spawn
from askexpert.mqtt import MqttClient
from askexpert.protocol import DEFAULT_PREFIX, LabelMsg, decode_label, labels_topic, status_topic
from askexpert.settings import CommonSettings
from askexpert.subscriber import Subscriber, wait_online


class LabelLog:
    """A consumer on a broker list: every label it is handed, with its arrival time (monotonic)."""

    def __init__(self, brokers: str, node: str, ident: str, session_expiry_s: int | None = None) -> None:
        self.got: list[tuple[float, LabelMsg]] = []
        self.lock = threading.Lock()
        self.client = MqttClient(CommonSettings(broker=brokers), "listener", ident, announce=False, session_expiry_s=session_expiry_s)
        self.client.subscribe(labels_topic(DEFAULT_PREFIX, node), self._on)
        self.client.start()
        assert self.client.wait_subscribed(15), f"no broker of {brokers} answered"

    def _on(self, message) -> None:
        with self.lock:
            self.got.append((time.monotonic(), decode_label(message.payload)))

    def labels(self) -> list[LabelMsg]:
        with self.lock:
            return [m for _, m in self.got]

    def wait(self, frames: int, timeout: float) -> list[LabelMsg]:
        """Until `frames` distinct frames are labelled (then a moment more for duplicates)."""
        deadline = time.monotonic() + timeout
        while len({m.frame_id for m in self.labels()}) < frames and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        return self.labels()

    def first_expert_after(self, t: float) -> float | None:
        """Seconds from `t` to the first expert label that arrived after it."""
        with self.lock:
            times = [at for at, m in self.got if at > t and m.source == "expert"]
        return min(times) - t if times else None

    def close(self) -> None:
        self.client.stop()


def wait_union(logs: list[LabelLog], frames: int, timeout: float) -> list[LabelMsg]:
    """Every label of all the consumers, once together they cover `frames` frames (or at timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len({m.frame_id for log in logs for m in log.labels()}) >= frames:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # a moment more, for duplicates
    return [m for log in logs for m in log.labels()]


def per_frame(labels: list[LabelMsg]) -> dict[tuple[str, str, int], list[LabelMsg]]:
    out: dict[tuple[str, str, int], list[LabelMsg]] = {}
    for m in labels:
        out.setdefault((m.node, m.run, m.frame_id), []).append(m)
    return out


def healthz(port: int) -> dict:
    """The component's /healthz body (200 or 503 alike)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def test_a_broker_list_is_one_setting(tmp_path, monkeypatch):
    """Flag, environment and YAML (a list there too) give the same list; mixed TLS is refused."""
    s = CommonSettings(broker="mqtt://a:1884, mqtt://b")
    assert [(b.host, b.port, b.tls) for b in s.brokers] == [("a", 1884, False), ("b", 1883, False)]
    (tmp_path / "c.yaml").write_text("broker: [mqtts://a:8884, ssl://b]\n")
    monkeypatch.setenv("ATE_CONFIG", str(tmp_path / "c.yaml"))
    assert [b.port for b in CommonSettings().brokers] == [8884, 8883] and CommonSettings().broker_tls
    monkeypatch.setenv("ATE_BROKER", "mqtt://x:1,mqtt://y:2")
    assert CommonSettings().broker == "mqtt://x:1,mqtt://y:2"
    for bad in ("mqtt://a,mqtts://b", "mqtt://a,", "mqtt://a,http://b"):
        with pytest.raises(ValueError):
            CommonSettings(broker=bad)


def test_a_client_takes_the_first_broker_that_answers_and_fails_over(broker):
    """A dead first entry is skipped; a kill -9 of the broker in use moves the client to the next,
    where its subscriptions are renewed; the cap on in-flight QoS 1 is Mosquitto's Receive Maximum."""
    second = Broker().start()
    dead = f"mqtt://127.0.0.1:{free_port()}"
    try:
        got: list[bytes] = []
        c = MqttClient(CommonSettings(broker=f"{dead},{broker.url},{second.url}"), "hub", "failover-test")
        c.subscribe("t/ping", lambda m: got.append(m.payload))
        c.start()
        assert c.wait_subscribed(15)
        assert c.broker == broker.url and c.failovers == 1
        assert c.receive_maximum[broker.url] == 20 and c.client.max_inflight_messages == 20  # mosquitto's default
        broker.proc.kill()
        broker.proc.wait()
        deadline = time.monotonic() + 20
        while not (c.connected.is_set() and c.broker == second.url) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.broker == second.url and c.wait_subscribed(10)
        assert c.broker_report()["broker"] == second.url
        other = MqttClient(CommonSettings(broker=second.url), "listener", "pinger", announce=False)
        other.start()
        assert other.wait_connected(10)
        other.publish("t/ping", b"on the second", qos=1)
        assert other.flush(10)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [b"on the second"], "subscriptions renewed on the next broker"
        other.stop()
        c.stop()
    finally:
        second.stop()


def test_after_a_failover_a_client_moves_back_to_the_first_broker_once_it_answers_a_while():
    """A on the list first, killed: the client moves to B. A back: once it has answered for
    broker_failback_s, the client is on A again, subscribed, and receives what is published there;
    on B, the broker it left, its retained status says offline and where it went."""
    a, b = Broker().start(), Broker().start()
    c = MqttClient(CommonSettings(broker=f"{a.url},{b.url}", broker_failback_s=1.0), "hub", "failback-test")
    got: list[bytes] = []
    c.subscribe("t/ping", lambda m: got.append(m.payload))
    try:
        c.start()
        assert c.wait_subscribed(15) and c.broker == a.url

        def on(url: str) -> bool:
            deadline = time.monotonic() + 30
            while not (c.connected.is_set() and c.broker == url) and time.monotonic() < deadline:
                time.sleep(0.05)
            return c.broker == url and c.wait_subscribed(10)

        a.proc.kill()
        a.proc.wait()
        assert on(b.url) and c.failovers == 1
        a.start()  # back, empty, on its port
        assert on(a.url) and c.failovers == 2
        left = Subscriber(CommonSettings(broker=b.url), status_topic(DEFAULT_PREFIX, "hub", "failback-test")).start(10)
        assert left.wait_for(lambda: bool(left.raw), 10)
        left.stop()
        assert json.loads(left.raw[-1][1]) | {"ts": 0} == {
            "state": "offline",
            "role": "hub",
            "id": "failback-test",
            "instance": c.instance,
            "moved_to": a.url,
            "ts": 0,
        }
        other = MqttClient(CommonSettings(broker=a.url), "listener", "pinger2", announce=False)
        other.start()
        assert other.wait_connected(10)
        other.publish("t/ping", b"on the first again", qos=1)
        assert other.flush(10)
        other.stop()
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [b"on the first again"]
    finally:
        c.stop()
        a.stop()
        b.stop()


def start_edge(pack, brokers: str, node: str, frames: int, metrics_port: int) -> subprocess.Popen:
    args = edge_args(str(pack), brokers, node, frames, "--fps", "100", "--tau", "0.15", "--deadline-ms", "1000")
    return spawn("edge_node.cli", *args, "--metrics-port", str(metrics_port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_count(log: LabelLog, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(log.labels()) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(log.labels()) >= n, f"only {len(log.labels())} labels before the kill"


def health_on(port: int, url: str, proc: subprocess.Popen, timeout: float = 30) -> dict:
    """The component's /healthz once it names `url` (its broker) and is connected, while it runs."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        report = healthz(port)
        if report.get("broker") == url and report.get("connected"):
            return report
        time.sleep(0.1)
    return healthz(port) if proc.poll() is None else {}


def edge_summary(edge: subprocess.Popen) -> dict:
    out, err = edge.communicate(timeout=120)
    assert edge.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_independent_mosquittos_kill_the_first(tiny_pack):
    """Edge and hub on `A,B`: kill -9 of A mid-stream, the stream goes on through B; /healthz names
    B. Independent brokers share no sessions, so the consumer subscribes on both (what it sees on B
    while still on A, or the other way round, is not lost) and dedups on (node, run, frame): every
    frame labelled, one label per frame."""
    a, b = Broker().start(), Broker().start()
    both = f"{a.url},{b.url}"
    hub_port, edge_port, frames = free_port(), free_port(), 600
    try:
        hub = start_hub(tiny_pack, both, "--hub-id", "fo1", "--metrics-port", str(hub_port))
        wait_online(CommonSettings(broker=a.url), "hub", "fo1", timeout=60)
        logs = [LabelLog(a.url, "famq", "fo-consumer"), LabelLog(b.url, "famq", "fo-consumer")]
        edge = start_edge(tiny_pack, both, "famq", frames, edge_port)
        wait_count(logs[0], 150)
        a.proc.kill()
        a.proc.wait()
        killed = time.monotonic()
        edge_health, hub_health = health_on(edge_port, b.url, edge), health_on(hub_port, b.url, hub)
        summary = edge_summary(edge)
        labels = wait_union(logs, frames, timeout=30)
        resumed = logs[1].first_expert_after(killed)
        for log in logs:
            log.close()
        stop(hub)
    finally:
        a.stop()
        b.stop()
    print(f"independent brokers: expert labels resumed {resumed} s after the kill; sources {summary}")
    assert summary["frames"] == frames and summary["unacknowledged"] == 0
    got = per_frame(labels)
    missing = sorted(set(range(frames)) - {k[2] for k in got})
    assert not missing, f"frames without a label: {missing}"
    assert all(len({(m.label, m.source) for m in v}) == 1 for v in got.values()), "a re-sent label is the same label"
    assert resumed is not None, "expert labels after the kill"
    assert edge_health.get("broker") == b.url and hub_health.get("broker") == b.url, "/healthz names the broker in use"
    assert edge_health["broker_failovers"] >= 1 and edge_health["healthy"] and hub_health["healthy"]


@pytest.mark.slow
def test_cluster_kill_the_hubs_node(tiny_pack):
    """Two aedes nodes on Redis. Edge on A, hub on B (`B,A`), one consumer on A and a durable one
    on B (`B,A`, persistent session). kill -9 of B mid-stream: the hub moves to A; the consumer on A
    gets every frame's label exactly once; the durable one loses none; expert labels resume."""
    if not AedesCluster.available():
        pytest.skip("aedes cluster not installed: scripts/install.sh (redis-server, npm ci in tests/brokers/aedes-cluster)")
    cluster = AedesCluster().start()
    a, b = cluster.url(0), cluster.url(1)
    hub_port, edge_port, frames = free_port(), free_port(), 600
    try:
        hub = start_hub(tiny_pack, f"{b},{a}", "--hub-id", "fo2", "--metrics-port", str(hub_port))
        wait_online(CommonSettings(broker=a), "hub", "fo2", timeout=60)
        on_a = LabelLog(a, "facl", "consumer-a")
        durable = LabelLog(f"{b},{a}", "facl", "consumer-durable", session_expiry_s=600)
        edge = start_edge(tiny_pack, a, "facl", frames, edge_port)
        wait_count(on_a, 150)
        cluster.kill(1)
        killed = time.monotonic()
        hub_health = health_on(hub_port, a, hub)
        summary = edge_summary(edge)
        labels_a, labels_d = on_a.wait(frames, timeout=30), durable.wait(frames, timeout=30)
        resumed = on_a.first_expert_after(killed)
        on_a.close()
        durable.close()
        stop(hub)
    finally:
        cluster.stop()
    got_a, got_d = per_frame(labels_a), per_frame(labels_d)
    print(
        f"cluster: expert labels resumed {resumed} s after the kill; durable consumer: {len(labels_d)} labels for "
        f"{len(got_d)} frames; sources {summary}"
    )
    assert summary["frames"] == frames and summary["unacknowledged"] == 0
    assert sorted(k[2] for k in got_a) == list(range(frames)), "0 missing on node A"
    assert all(len(v) == 1 for v in got_a.values()), "0 duplicates on node A"
    assert sorted(k[2] for k in got_d) == list(range(frames)), "the durable consumer loses nothing"
    assert all(len({(m.label, m.source) for m in v}) == 1 for v in got_d.values())
    assert resumed is not None, "expert labels after the kill"
    assert hub_health.get("broker") == a and hub_health["broker_failovers"] >= 1 and hub_health["healthy"]


@pytest.mark.slow
def test_edge_behind_the_shipped_bridge(tiny_pack):
    """Edge on an edge-local Mosquitto bridged to the site one by docker/mosquitto/bridge.conf, hub
    and consumer on the site broker: offloads and replies cross the bridge (Response Topic and
    Correlation Data kept), every frame labelled exactly once at the site."""
    from askexpert.localbroker import start_bridged

    site, local = start_bridged()
    frames = 200
    try:
        hub = start_hub(tiny_pack, site.url, "--hub-id", "fo3")
        wait_online(CommonSettings(broker=site.url), "hub", "fo3", timeout=60)
        log = LabelLog(site.url, "fabr", "consumer-site")
        edge = start_edge(tiny_pack, local.url, "fabr", frames, free_port())
        summary = edge_summary(edge)
        labels = log.wait(frames, timeout=30)
        log.close()
        stop(hub)
    finally:
        local.stop()
        site.stop()
    got = per_frame(labels)
    assert sorted(k[2] for k in got) == list(range(frames)) and all(len(v) == 1 for v in got.values())
    assert summary["expert"] > 0, summary  # replies crossed the bridge back
