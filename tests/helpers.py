"""Helpers for tests that run the real components as processes against a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from askexpert.localbroker import Broker, spawn, wait_port
from askexpert.protocol import FrameBatch, LabelMsg, decode_label
from askexpert.settings import CommonSettings
from askexpert.subscriber import wait_online


def start_hub(pack: Path, broker_url: str, *extra: str) -> subprocess.Popen:
    return spawn(
        "expert_hub.cli",
        "run",
        "--pack",
        str(pack),
        "--broker",
        broker_url,
        *extra,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_edge(pack: Path, broker_url: str, *extra: str, timeout: float = 120) -> dict:
    """Run an edge to the end of its source; return the run summary it wrote (--summary-json: the
    caller's, or a temporary file)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = list(extra)
        if "--summary-json" not in args:
            args += ["--summary-json", str(Path(tmp) / "summary.json")]
        summary = Path(args[args.index("--summary-json") + 1])
        out = subprocess.run(
            [sys.executable, "-m", "edge_node.cli", "run", "--pack", str(pack), "--broker", broker_url, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(summary.read_text())


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def broker_writable(folder: Path) -> Path:
    """`folder` (in a world-traversable one such as /tmp), made writable by the broker: Mosquitto
    started as root drops to its `mosquitto` user, which cannot write a root-owned 0700 temp folder;
    it then logs "Error saving in-memory database" (to a pipe nobody reads) and comes back from a
    restart without any session."""
    import os
    import pwd

    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("mosquitto")
        except KeyError:  # no such user: Mosquitto stays root
            return folder
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    return folder


def wait_hub_online(broker_url: str, hub_id: str, timeout: float = 60) -> None:
    wait_online(CommonSettings(broker=broker_url), "hub", hub_id, timeout=timeout)


class Collector:
    """A user's own consumer, written as a user would with plain paho (no status, no will)."""

    def __init__(self, broker_url: str, *topics: str) -> None:
        host, port = broker_url.rsplit("/", 1)[-1].split(":")
        self.raw: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.topics = topics
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect(host, int(port))
        self.ready = threading.Event()
        self.client.loop_start()
        assert self.ready.wait(10), "collector could not subscribe"

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.ready.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.raw.append((msg.topic, msg.payload))

    def labels(self) -> list[LabelMsg]:
        with self.lock:
            return [decode_label(p) for t, p in self.raw if t.endswith("/labels")]

    def wait_labels(self, n: int, timeout: float = 30) -> list[LabelMsg]:
        """Until n distinct frames are labelled (then a moment more, to catch duplicates) or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            labels = self.labels()
            if len({m.frame_id for m in labels}) >= n:
                time.sleep(0.3)
                return self.labels()
            time.sleep(0.05)
        return self.labels()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


AEDES_DIR = Path(__file__).parent / "brokers" / "aedes"


class AedesBroker(Broker):
    """aedes 2 (Node.js, MQTT 5) on a free port: the second broker the system must run on.
    Installed by `.ci/run` (`npm ci` in tests/brokers/aedes). Stops like the Mosquitto `Broker`."""

    def start(self) -> "AedesBroker":
        self.proc = subprocess.Popen(
            ["node", str(AEDES_DIR / "server.mjs"), str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_port(self.port, proc=self.proc)
        return self


class PausableProxy:
    """A TCP relay on loopback between a client and the broker that can stop relaying (both ways,
    connections kept open): a network partition without netem, as a stalled link looks to both ends."""

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        self.relaying = threading.Event()
        self.relaying.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src, dst) -> None:
        try:
            while data := src.recv(65536):
                self.relaying.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.relaying.set()
        self.server.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


AEDES_CLUSTER_DIR = Path(__file__).parent / "brokers" / "aedes-cluster"
REDIS = "redis-server"


class AedesCluster:
    """A private Redis and two aedes nodes on it (`nodes[0]` is A, `nodes[1]` is B): messages cross
    between nodes through Redis pub/sub, sessions and QoS 1 queues live in Redis. Installed by
    scripts/install.sh (Debian redis-server, `npm ci` in tests/brokers/aedes-cluster)."""

    def __init__(self) -> None:
        from askexpert.localbroker import free_port

        self.redis_port = free_port()
        self.ports = [free_port(), free_port()]
        self.redis: subprocess.Popen | None = None
        self.nodes: list[subprocess.Popen] = []

    @staticmethod
    def available() -> bool:
        import shutil

        return bool(shutil.which("node") and shutil.which(REDIS) and (AEDES_CLUSTER_DIR / "node_modules" / "mqemitter-redis").is_dir())

    def url(self, i: int) -> str:
        return f"mqtt://127.0.0.1:{self.ports[i]}"

    def start(self) -> "AedesCluster":
        args = ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.redis = subprocess.Popen([REDIS, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.redis_port, proc=self.redis)
        for i, port in enumerate(self.ports):
            cmd = ["node", str(AEDES_CLUSTER_DIR / "server.mjs"), str(port), str(self.redis_port), "AB"[i]]
            self.nodes.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            wait_port(port, proc=self.nodes[-1])
        return self

    def kill(self, i: int) -> None:
        """kill -9 of one node: no clean close, no will handed over, sockets reset."""
        self.nodes[i].kill()
        self.nodes[i].wait()

    def stop(self) -> None:
        for proc in [*self.nodes, self.redis]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def frames(
    node: str,
    fids: list[int],
    pack: str,
    image: np.ndarray,
    *,
    run: str = "r1",
    deadline_ms: float | None = None,
    version: str | None = None,
    topk: tuple[int, ...] = (0, 2),
) -> FrameBatch:
    """A frames message of `len(fids)` copies of `image` (uint8 H, W, C), as an edge would send them."""
    n = len(fids)
    return FrameBatch(
        node=node,
        run=run,
        pack=pack,
        frame_ids=np.asarray(fids),
        t_capture=np.full(n, time.time()),
        topk=np.tile(topk, (n, 1)),
        topk_p=np.tile(np.linspace(0.4, 0.1, len(topk)), (n, 1)),
        images=np.repeat(image[None], n, axis=0),
        deadline_ms=None if deadline_ms is None else np.full(n, deadline_ms),
        pack_version=version,
    )
