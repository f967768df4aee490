"""The shipped Mosquitto config (docker/mosquitto) with a real broker, run as the container runs it.

Started as root (as the eclipse-mosquitto image starts it), Mosquitto drops to its own user
`mosquitto` before it reads the password file and the ACL, both made by make-passwords.sh (mode
0600, owned by that user). The config is the shipped one with a free port and temp paths; auth,
ACL, set_tcp_nodelay, persistence and limits are exactly what the broker container runs. The
folders are world-traversable (as a checkout is), so the dropped user can reach its files.
"""

from __future__ import annotations

import os
import pwd
import queue
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from askexpert.localbroker import MOSQUITTO, free_port, wait_port

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "docker" / "mosquitto"
USERS = {
    "hub1": "hub-pw",
    "hub2": "hub2-pw",
    "ops": "ops-pw",
    "cam1": "cam1-pw",
    "cam2": "cam2-pw",
    "labels-archive": "archive-pw",
    "labels-dash": "dash-pw",
    "collect-cam1": "collect-pw",
}
# Warnings the shipped config makes Mosquitto log on purpose; each is explained in docs/deploy.md.
INTENDED_WARNINGS = ["ACL pattern 'ate/v1/hubs/+/load' does not contain '%c' or '%u'."]
TROUBLE = re.compile(r"warning|error|unable|denied|refuse|deprecated", re.I)
SCRIPT_PATH = "/usr/bin:/bin:/usr/sbin:/usr/local/bin"

pytestmark = pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="mosquitto_passwd not installed")


def broker_user() -> pwd.struct_passwd | None:
    """The user Mosquitto drops to when started as root (None: not root, it stays who we are)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no `mosquitto` user to drop to")


def make_passwords(auth: Path, users: dict[str, str]) -> subprocess.CompletedProcess:
    """docker/mosquitto/make-passwords.sh into `auth`, owned by the broker's user, no prompts."""
    owner = broker_user()
    env = {"PATH": SCRIPT_PATH, "AUTH_DIR": str(auth), **{f"ATE_PW_{u.replace('-', '_')}": pw for u, pw in users.items()}}
    env |= {"BROKER_UID": str(owner.pw_uid), "BROKER_GID": str(owner.pw_gid)} if owner else {"NO_CHOWN": "1"}
    return subprocess.run(
        ["bash", str(CONF_DIR / "make-passwords.sh"), *users], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )


def broker_dir() -> Path:
    """A world-traversable folder with auth/ (from make-passwords.sh) and data/ (the broker's own)."""
    root = Path(tempfile.mkdtemp(prefix="shipped-mosquitto-"))
    root.chmod(0o755)
    (root / "auth").mkdir(mode=0o755)
    (root / "data").mkdir()
    if owner := broker_user():
        os.chown(root / "data", owner.pw_uid, owner.pw_gid)
    done = make_passwords(root / "auth", USERS)
    assert done.returncode == 0, done.stderr
    return root


def start_shipped(root: Path, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """The shipped broker config on a free port, paths moved under `root`; its log goes to root/log."""
    port = port or free_port()
    conf = (CONF_DIR / "mosquitto.conf").read_text()
    assert re.search(r"^listener 1883$", conf, re.M), "the shipped config listens on 1883"
    conf = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    conf = conf.replace("/mosquitto/data/", f"{root}/data/").replace("/mosquitto/auth/", f"{root}/auth/")
    assert "/mosquitto/" not in re.sub(r"#.*", "", conf), "every container path is moved"
    (root / "mosquitto.conf").write_text(conf)
    (root / "mosquitto.conf").chmod(0o644)
    log = open(root / "log", "ab")  # the broker writes it for its whole life
    proc = subprocess.Popen([MOSQUITTO, "-c", str(root / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    for _ in range(100):
        if proc.poll() is not None:
            break
        try:
            wait_port(port, timeout=0.1)
            return proc, port
        except TimeoutError:
            pass
    proc.kill()
    pytest.fail(f"mosquitto did not start with the shipped config: {(root / 'log').read_text()}")


@pytest.fixture(scope="module")
def shipped():
    root = broker_dir()
    proc, port = start_shipped(root)
    yield root, port, proc
    proc.terminate()
    proc.wait(5)
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def shipped_broker(shipped):
    return shipped[1]


def test_runs_as_its_own_user_on_files_only_it_reads(shipped):
    """Running as `mosquitto`, its password file and ACL 0600 and its own (2.0.16+ warns otherwise);
    the ACL is the shipped one plus a block per consumer user."""
    root, port, proc = shipped
    assert proc.poll() is None
    uid = int(re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text(), re.M).group(1))
    owner = broker_user()
    assert uid == (owner.pw_uid if owner else os.geteuid())
    for name in ("passwd", "acl"):
        st = (root / "auth" / name).stat()
        assert st.st_mode & 0o777 == 0o600 and st.st_uid == uid
    acl = (root / "auth" / "acl").read_text()
    assert acl.startswith((CONF_DIR / "acl").read_text())
    assert re.findall(r"^user (labels-\S+)$", acl, re.M) == ["labels-archive", "labels-dash"]
    assert re.findall(r"^user (collect-\S+)$", acl, re.M) == ["collect-cam1"]


def unexpected_warnings(log: str) -> list[str]:
    """The log's lines that report trouble, but for the documented intended warnings."""
    return [ln for ln in log.splitlines() if TROUBLE.search(ln) and not any(w in ln for w in INTENDED_WARNINGS)]


def log_of_a_run(root: Path) -> str:
    """Start the broker on `root`, let every kind of user connect (a durable consumer too), stop it,
    and read its whole log: Mosquitto block-buffers stdout into a file, so only a stopped broker's
    log is complete (while it runs the file stays empty)."""
    proc, port = start_shipped(root)
    try:
        made = [Client(port, user, f"log-{user}", durable=user.startswith("labels-")) for user in USERS]
        assert not any(c.rc.is_failure for c in made)
        for c in made:
            c.close()
    finally:
        proc.terminate()
        proc.wait(5)
    return (root / "log").read_text()


def test_broker_logs_no_warning_but_the_documented_ones():
    """The shipped config, run and stopped: nothing in its log reports trouble except the intended
    warnings, and each of those is explained in docs/deploy.md."""
    root = broker_dir()
    try:
        log = log_of_a_run(root)
    finally:
        shutil.rmtree(root)
    assert f"Client {list(USERS)[-1]} disconnected." in log, "the log was read to its end"
    assert unexpected_warnings(log) == []
    deploy = (REPO / "docs" / "deploy.md").read_text()
    assert all(w in deploy for w in INTENDED_WARNINGS)


def test_the_log_check_fails_on_a_config_that_makes_mosquitto_warn():
    """The check above is not blind: an ACL pattern without %u (the mistake the shipped ACL makes on
    purpose once) in a deliberately bad copy is reported."""
    root = broker_dir()
    try:
        with open(root / "auth" / "acl", "a") as acl:
            acl.write("pattern read ate/v1/nodes/+/labels\n")  # every user would read every label
        log = log_of_a_run(root)
    finally:
        shutil.rmtree(root)
    assert [ln.split(": ", 1)[1] for ln in unexpected_warnings(log)] == [
        "Warning: ACL pattern 'ate/v1/nodes/+/labels' does not contain '%c' or '%u'."
    ]


def test_make_passwords_refuses_an_empty_password_and_writes_nothing(tmp_path):
    auth = tmp_path / "auth"
    auth.mkdir()
    done = make_passwords(auth, {"hub1": "x", "ops": ""})
    assert done.returncode != 0 and "empty password for ops" in done.stderr
    assert list(auth.iterdir()) == []


def test_compose_broker_healthcheck_needs_no_password(shipped_broker):
    """docker-compose.yml's broker healthcheck, run as written: healthy when up, unhealthy when not."""
    test = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["broker"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL" and "-u " not in test[1] and "-P " not in test[1]
    assert "-p 1883" in test[1]
    up = subprocess.run(["sh", "-c", test[1].replace("-p 1883", f"-p {shipped_broker}")], timeout=10)
    down = subprocess.run(["sh", "-c", test[1].replace("-p 1883", f"-p {free_port()}")], timeout=10)
    assert (up.returncode, down.returncode != 0) == (0, True)


class Client:
    """A paho v5 client that records its CONNACK, SUBACKs and messages."""

    def __init__(self, port: int, user: str | None, name: str, durable: bool = False) -> None:
        self.msgs: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{name}", protocol=mqtt.MQTTv5)
        if user:
            c.username_pw_set(user, USERS.get(user, "wrong"))
        c.on_connect = lambda cl, u, f, rc, p: self.connack.put(rc)
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.subacks.put(rcs)
        c.on_message = lambda cl, u, m: self.msgs.put((m.topic, m.payload))
        c.reconnect_delay_set(60, 60)
        self.c = c
        if durable:  # a consumer that must lose nothing: persistent session, QoS 1
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            c.connect("127.0.0.1", port, clean_start=False, properties=props)
        else:
            c.connect("127.0.0.1", port)
        c.loop_start()
        self.rc = self.connack.get(timeout=5)

    def subscribe(self, topic: str):
        self.c.subscribe(topic, qos=1)
        return self.subacks.get(timeout=5)[0]

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def got(self, timeout: float = 1.0, n: int | None = None) -> list[tuple[str, bytes]]:
        """Messages received within `timeout` (sooner once `n` have come)."""
        out, end = [], time.monotonic() + timeout
        while n is None or len(out) < n:
            try:
                out.append(self.msgs.get(timeout=max(0.0, end - time.monotonic())))
            except queue.Empty:
                return out
        return out

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(shipped_broker):
    made: list[Client] = []

    def make(user: str | None, name: str) -> Client:
        made.append(Client(shipped_broker, user, name))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_anonymous_and_wrong_password_are_refused(clients):
    anon = clients(None, "anon")
    assert anon.rc.is_failure and anon.rc.value in (0x86, 0x87)  # bad user/password or not authorized
    wrong = clients("mallory", "wrong")
    assert wrong.rc.is_failure


def test_edge_cannot_read_another_nodes_replies(clients):
    hub, cam1, cam2 = clients("hub1", "hub"), clients("cam1", "cam1"), clients("cam2", "cam2")
    assert not (hub.rc.is_failure or cam1.rc.is_failure or cam2.rc.is_failure)
    # cam2 tries to eavesdrop on cam1's replies, frames and tau/set: refused or never delivered
    snoop = [
        cam2.subscribe(t) for t in ("ate/v1/nodes/cam1/replies/+", "ate/v1/experts/+/frames/+", "ate/v1/nodes/cam1/tau/set", "ate/v1/#")
    ]
    assert cam1.subscribe("ate/v1/nodes/cam1/replies/+").value == 1  # granted QoS 1
    hub.publish("ate/v1/nodes/cam1/replies/hub1", b"reply-for-cam1")
    assert cam1.got(2.0, n=1) == [("ate/v1/nodes/cam1/replies/hub1", b"reply-for-cam1")]
    # Mosquitto 2.0.11 grants the SUBACK and filters on delivery (newer ones may answer 0x87):
    # either way, nothing reaches cam2.
    assert all(rc.is_failure or rc.value <= 2 for rc in snoop)
    cam1.publish("ate/v1/experts/0/frames/cam1", b"cam1-frame")
    assert cam2.got(0.5) == []


def test_edge_publishes_frames_hub_receives_and_replies(clients):
    hub, cam1 = clients("hub1", "hub2"), clients("cam1", "cam1b")
    assert hub.subscribe("ate/v1/experts/+/frames/+").value == 1
    assert cam1.subscribe("ate/v1/nodes/cam1/replies/+").value == 1
    cam1.publish("ate/v1/experts/0-2/frames/cam2", b"frame-as-cam2")  # not its name: dropped by the broker
    cam1.publish("ate/v1/experts/0-2/frames/cam1", b"frame")
    assert hub.got(2.0, n=1) == [("ate/v1/experts/0-2/frames/cam1", b"frame")]
    assert hub.got(0.3) == []
    hub.publish("ate/v1/nodes/cam1/replies/hub2", b"posing-as-hub2")  # hub1 answers only under its own name
    hub.publish("ate/v1/nodes/cam1/replies/hub1", b"label")
    assert cam1.got(2.0, n=1) == [("ate/v1/nodes/cam1/replies/hub1", b"label")]


def test_edge_may_publish_only_its_own_topics(clients):
    ops, cam1, cam2 = clients("ops", "ops"), clients("cam1", "cam1c"), clients("cam2", "cam2c")
    assert ops.subscribe("ate/v1/#").value == 1
    cam1.publish("ate/v1/nodes/cam1/labels", b"own-label")
    cam1.publish("ate/v1/stats/edge/cam1", b"own-stats")
    cam2.publish("ate/v1/nodes/cam1/labels", b"forged-label")  # dropped by the broker
    cam2.publish("ate/v1/nodes/cam1/replies/cam2", b"forged-reply")
    cam2.publish("ate/v1/nodes/cam1/tau/set", b"0.1")
    cam2.publish("ate/v1/stats/edge/cam2", b"cam2-last")  # allowed; the broker handles it after the forgeries
    got = ops.got(2.0, n=3)
    got += ops.got(0.3)
    payloads = [p for _, p in got]
    assert b"own-label" in payloads and b"own-stats" in payloads and b"cam2-last" in payloads
    assert not {b"forged-label", b"forged-reply", b"0.1"} & set(payloads)


def test_hub_and_ops_users_publish_only_within_their_roles(clients):
    """A hub answers, announces and reports only under its own name, and neither a hub nor ops may
    publish as an edge node under its own name (frames, labels, edge status): no free inference,
    no phantom nodes, no answers or status in another hub's name."""
    ops, hub1, hub2 = clients("ops", "ops3"), clients("hub1", "hub1r"), clients("hub2", "hub2r")
    assert ops.subscribe("ate/v1/#").value == 1
    for who, name in ((hub1, "hub1"), (ops, "ops")):
        who.publish(f"ate/v1/experts/0/frames/{name}", b"free-inference")
        who.publish(f"ate/v1/nodes/{name}/labels", b"phantom-label")
        who.publish(f"ate/v1/status/edge/{name}", b"phantom-online")
    hub1.publish("ate/v1/nodes/cam1/replies/hub2", b"as-hub2")
    hub1.publish("ate/v1/status/hub/hub2", b"hub2-offline")
    hub1.publish("ate/v1/stats/hub/hub2", b"hub2-stats")
    hub1.publish("ate/v1/status/hub/hub1", b"hub1-online")  # its own: allowed, and handled after the rest
    hub2.publish("ate/v1/stats/hub/hub2", b"hub2-own-stats")
    got = ops.got(2.0, n=2) + ops.got(0.3)
    payloads = {p for _, p in got}
    assert {b"hub1-online", b"hub2-own-stats"} <= payloads
    assert not {b"free-inference", b"phantom-label", b"phantom-online", b"as-hub2", b"hub2-offline", b"hub2-stats"} & payloads


def test_a_collector_reads_its_nodes_frames_and_labels_and_nothing_else(clients):
    """`collect-cam1` (edge-node collect for cam1) gets cam1's offloaded frames and labels, not
    cam2's, no replies, and publishes nothing: not as cam1, nor as an edge named after itself."""
    col, cam1, cam2, ops = clients("collect-cam1", "col"), clients("cam1", "cam1g"), clients("cam2", "cam2g"), clients("ops", "ops4")
    assert not col.rc.is_failure and ops.subscribe("ate/v1/#").value == 1
    for t in ("ate/v1/experts/+/frames/+", "ate/v1/nodes/+/labels", "ate/v1/nodes/cam1/replies/+"):
        col.subscribe(t)
    cam2.publish("ate/v1/experts/0/frames/cam2", b"cam2-frame")
    cam2.publish("ate/v1/nodes/cam2/labels", b"cam2-label")
    col.publish("ate/v1/nodes/cam1/labels", b"forged-by-collector")
    col.publish("ate/v1/experts/0/frames/collect-cam1", b"free-inference")
    cam1.publish("ate/v1/experts/0-1/frames/cam1", b"cam1-frame")
    cam1.publish("ate/v1/nodes/cam1/labels", b"cam1-label")  # handled after everything above
    got = col.got(2.0, n=2) + col.got(0.3)
    assert got == [("ate/v1/experts/0-1/frames/cam1", b"cam1-frame"), ("ate/v1/nodes/cam1/labels", b"cam1-label")]
    seen = {p for _, p in ops.got(2.0, n=4) + ops.got(0.3)}
    assert b"cam1-label" in seen and not {b"forged-by-collector", b"free-inference"} & seen


def test_ops_sets_tau_and_only_that_node_reads_it(clients):
    ops, cam1, cam2 = clients("ops", "ops2"), clients("cam1", "cam1d"), clients("cam2", "cam2d")
    assert cam1.subscribe("ate/v1/nodes/cam1/tau/set").value == 1
    ops.publish("ate/v1/nodes/cam1/tau/set", b"0.6")
    assert cam1.got(2.0, n=1) == [("ate/v1/nodes/cam1/tau/set", b"0.6")]
    assert cam2.subscribe("ate/v1/nodes/cam1/tau") is not None
    assert cam2.got(0.3) == []  # not even the retained current value of another node


def test_hub_shared_subscription_passes_the_acl(clients):
    """`expert-hub --share-group` subscribes as $share/<group>/...: the ACL must still let frames in."""
    hub, cam1 = clients("hub1", "hub3"), clients("cam1", "cam1e")
    assert not hub.subscribe("$share/hubs/ate/v1/experts/+/frames/+").is_failure
    cam1.publish("ate/v1/experts/1/frames/cam1", b"shared-frame")
    assert hub.got(2.0, n=1) == [("ate/v1/experts/1/frames/cam1", b"shared-frame")]


def test_only_a_hub_publishes_its_load_and_edges_read_it(clients):
    """Adaptive tau trusts hub loads: a hub writes only its own, an edge reads them and writes none."""
    hub, cam1 = clients("hub1", "hub4"), clients("cam1", "cam1f")
    assert cam1.subscribe("ate/v1/hubs/+/load").value == 1
    cam1.publish("ate/v1/hubs/hub1/load", b"forged-by-cam1")  # dropped by the broker
    cam1.publish("ate/v1/hubs/cam1/load", b"cam1-as-a-hub")
    hub.publish("ate/v1/hubs/hub2/load", b"hub1-as-hub2")
    hub.publish("ate/v1/hubs/hub1/load", b"hub1-load")
    assert cam1.got(2.0, n=1) == [("ate/v1/hubs/hub1/load", b"hub1-load")]
    assert cam1.got(0.3) == []


def test_ops_reads_broker_uptime(clients):
    """Dashboards read $SYS as `ops`."""
    ops = clients("ops", "ops3")
    assert ops.subscribe("$SYS/broker/uptime").value == 1
    got = ops.got(12.0, n=1)  # $SYS is published every sys_interval (10 s) and retained
    assert got and got[0][0] == "$SYS/broker/uptime"


def test_real_edge_client_with_credentials_gets_tau_from_ops(clients, shipped_broker):
    """The component's own MqttClient (status + will, TCP_NODELAY) under the ACL, and tau/set end to end."""
    from askexpert.mqtt import MqttClient
    from askexpert.settings import CommonSettings
    from edge_node.tau_control import TauControl

    ops = clients("ops", "ops4")
    assert ops.subscribe("ate/v1/status/edge/cam1").value == 1
    settings = CommonSettings(broker=f"mqtt://127.0.0.1:{shipped_broker}", username="cam1", password=USERS["cam1"])
    edge = MqttClient(settings, "edge", "cam1")
    tau = TauControl(edge, settings.prefix, "cam1", 0.8)
    edge.start()
    try:
        assert edge.wait_connected(5)
        tau.start()
        assert any(b'"starting"' in p for _, p in ops.got(2.0, n=1))  # its status passed the ACL
        time.sleep(0.2)
        ops.publish("ate/v1/nodes/cam1/tau/set", b"0.65")
        end = time.monotonic() + 5
        while tau.value != 0.65 and time.monotonic() < end:
            time.sleep(0.02)
        assert tau.value == 0.65
    finally:
        edge.stop()


def test_acknowledged_labels_survive_a_broker_kill9():
    """Labels queued for an offline durable consumer, acknowledged by the broker, then kill -9 and a
    restart on the same data: at most `autosave_interval - 1` of them may be lost (measured: 595 of 600)."""
    conf = (CONF_DIR / "mosquitto.conf").read_text()
    interval = int(re.search(r"^autosave_interval (\d+)$", conf, re.M).group(1))
    assert re.search(r"^autosave_on_changes true$", conf, re.M)
    root = broker_dir()
    proc, port = start_shipped(root)
    n = 600
    try:
        ops = Client(port, "ops", "durable-ops", durable=True)
        assert ops.subscribe("ate/v1/nodes/cam1/labels").value == 1
        ops.close()  # offline: the broker queues its labels
        cam1 = Client(port, "cam1", "cam1-k9")
        for i in range(n):
            cam1.publish("ate/v1/nodes/cam1/labels", b"label %d" % i)  # each waits for its PUBACK
        cam1.close()
        proc.kill()
        proc.wait(5)
        proc, _ = start_shipped(root, port)
        ops = Client(port, "ops", "durable-ops", durable=True)
        got = {p for _, p in ops.got(10.0, n=n)}
        ops.close()
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(root)
    assert len(got) >= n - (interval - 1), f"{len(got)} of {n} acknowledged labels survived kill -9"


def test_client_ids_are_user_names_so_no_user_can_take_over_another(clients):
    """cam2 connecting with cam1's client id does not kick cam1 off (the broker uses the user name as
    client id), and two hubs, each its own user, stay connected side by side."""
    cam1 = clients("cam1", "ate-edge-cam1")
    assert cam1.subscribe("ate/v1/nodes/cam1/replies/+").value == 1
    intruder = clients("cam2", "ate-edge-cam1")  # asks for cam1's client id
    hub1, hub2 = clients("hub1", "ate-hub-x"), clients("hub2", "ate-hub-x")
    assert not (intruder.rc.is_failure or hub1.rc.is_failure or hub2.rc.is_failure)
    time.sleep(0.3)
    assert cam1.c.is_connected() and hub1.c.is_connected() and hub2.c.is_connected()
    hub2.publish("ate/v1/nodes/cam1/replies/hub2", b"still here")
    assert cam1.got(2.0, n=1) == [("ate/v1/nodes/cam1/replies/hub2", b"still here")]


# ------------------------------------------------------------------ label consumers with users of their own
def label(i: int) -> bytes:
    from askexpert.protocol import LabelMsg

    return LabelMsg("cam1", i, 0, "T-shirt/top", 0.9, "edge", None, 1.0, 1000.0 + i, 0, 0.9, "p", "r1").encode()


def consumer(port: int, user: str, **kw):
    """askexpert's own consumer (LabelSubscriber) under a broker user; durable with `session_expiry_s`."""
    from askexpert.settings import CommonSettings
    from askexpert.subscriber import LabelSubscriber

    settings = CommonSettings(broker=f"mqtt://127.0.0.1:{port}", username=user, password=USERS[user])
    return LabelSubscriber(settings, "+", **kw).start()


def publish_labels(port: int, ids: range) -> None:
    cam1 = Client(port, "cam1", "cam1-labels")
    for i in ids:
        cam1.publish("ate/v1/nodes/cam1/labels", label(i))  # each waits for its PUBACK
    cam1.close()


def test_a_durable_consumer_with_its_own_user_keeps_what_came_while_it_was_away(shipped_broker):
    """The consumer is offline while 100 labels are published; meanwhile an operator reads labels as
    `ops` and a dashboard as another consumer user (both clean start). Back, it gets all 100: its
    session is its user's, and nobody else connects as that user. (Run as `ops`, as the docs used to
    say, the operator's clean start wiped the session: 0 of 100, checked at the end.)"""
    for user, kept in (("labels-archive", 100), ("ops", 0)):
        durable = consumer(shipped_broker, user, session_expiry_s=3600)
        durable.stop()  # offline: the broker keeps its session and queues its labels
        ops, dash = Client(shipped_broker, "ops", "t-ops"), Client(shipped_broker, "labels-dash", "t-dash")
        assert ops.subscribe("ate/v1/nodes/+/labels").value == 1 and dash.subscribe("ate/v1/nodes/+/labels").value == 1
        publish_labels(shipped_broker, range(100))
        assert (len(ops.got(5.0, n=100)), len(dash.got(5.0, n=100))) == (100, 100)
        ops.close()
        dash.close()
        back = consumer(shipped_broker, user, session_expiry_s=3600)
        back.wait(frames=kept or None, idle_timeout=1.0)
        back.stop()
        assert (back.count, back.taken_over) == (kept, None), user


def test_consumers_with_users_of_their_own_all_get_every_label(shipped_broker):
    """A durable consumer, a dashboard (another consumer user, auto-reconnecting like paho's
    defaults) and an operator online at once: no takeover, 300 of 300 each."""
    durable = consumer(shipped_broker, "labels-archive", session_expiry_s=3600)
    dash = consumer(shipped_broker, "labels-dash")
    ops = Client(shipped_broker, "ops", "t-ops-all")
    assert ops.subscribe("ate/v1/nodes/+/labels").value == 1
    publish_labels(shipped_broker, range(300))
    why = [c.wait(frames=300, idle_timeout=5.0) for c in (durable, dash)]
    got_ops = {p for _, p in ops.got(5.0, n=300)}
    for c in (durable, dash):
        c.stop()
    ops.close()
    assert why == ["done", "done"] and (durable.count, dash.count, len(got_ops)) == (300, 300, 300)
    assert (durable.client.connects, dash.client.connects, durable.taken_over, dash.taken_over) == (1, 1, None, None)


def test_a_durable_consumer_sharing_its_user_says_it_was_taken_over(shipped_broker):
    """A second client under the durable consumer's user (paho defaults: auto-reconnect, clean start
    first): on Mosquitto 2.0 each connection closes the other's, with no reason sent, and every
    return finds the durable session wiped. The consumer sees its session lost twice, gives up
    (wait() says taken-over) and leaves the connection to the other, which then gets the labels."""
    import threading

    durable = consumer(shipped_broker, "labels-dash", session_expiry_s=3600)
    connected = threading.Semaphore(0)
    other = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dashboard", protocol=mqtt.MQTTv5)
    other.username_pw_set("labels-dash", USERS["labels-dash"])
    other.on_connect = lambda cl, u, f, rc, p: (cl.subscribe("ate/v1/nodes/+/labels", qos=1), connected.release())
    got: list[bytes] = []
    other.on_message = lambda cl, u, m: got.append(m.payload)
    other.connect("127.0.0.1", shipped_broker)
    other.loop_start()
    try:
        assert durable.wait(idle_timeout=60.0) == "taken-over"
        assert (durable.client.connects, durable.sessions_lost) == (3, 2), "two returns, each to a wiped session"
        assert all(connected.acquire(timeout=30) for _ in range(3)), "the other client is back, for good"
        publish_labels(shipped_broker, range(20))
        end = time.monotonic() + 5
        while len(got) < 20 and time.monotonic() < end:
            time.sleep(0.05)
        assert (len(got), durable.count, durable.client.connects) == (20, 0, 3), "the consumer stayed away"
    finally:
        other.loop_stop()
        durable.stop()
