"""Helpers for tests that run the real components as processes against a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from askexpert.localbroker import Broker, spawn, wait_port
from askexpert.protocol import LabelMsg, decode_label
from askexpert.settings import CommonSettings
from askexpert.subscriber import Subscriber, wait_online


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
    """Run an edge to the end of its source; return its summary line."""
    out = subprocess.run(
        [sys.executable, "-m", "edge_node.cli", "run", "--pack", str(pack), "--broker", broker_url, *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def wait_hub_online(broker_url: str, hub_id: str, timeout: float = 60) -> None:
    wait_online(CommonSettings(broker=broker_url), "hub", hub_id, timeout=timeout)


class Collector(Subscriber):
    """A user's own consumer: askexpert's subscriber (no status, no will), started at once.
    `persistent_id`: a persistent session, as a consumer that must lose no label would use."""

    def __init__(self, broker_url: str, *topics: str, persistent_id: str | None = None) -> None:
        super().__init__(CommonSettings(broker=broker_url), *topics, ident=persistent_id, session_expiry_s=600 if persistent_id else None)
        self.labelled: set[int] = set()
        self.start()

    def accept(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/labels"):
            self.labelled.add(decode_label(payload).frame_id)

    def labels(self) -> list[LabelMsg]:
        with self.changed:
            return [decode_label(p) for t, p in self.raw if t.endswith("/labels")]

    def wait_labels(self, n: int, timeout: float = 30) -> list[LabelMsg]:
        """Until n distinct frames are labelled (then a moment more, to catch duplicates) or timeout."""
        if self.wait_for(lambda: len(self.labelled) >= n, timeout):
            time.sleep(0.3)
        return self.labels()

    def close(self) -> None:
        self.stop()


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
