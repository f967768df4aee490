"""A private Mosquitto on a free port, for tests, benchmarks and the demo (never assume 1883)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Until something listens on 127.0.0.1:port; fails early if `proc` (the server) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def write_config(path: Path, port: int, extra: str = "") -> Path:
    """A private Mosquitto's config: loopback only, anonymous, Nagle off (latency), no persistence;
    `extra` lines are appended (a later line wins). One writer for tests, benchmarks and the demo."""
    path.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
        f"persistence false\nlog_dest stderr\nlog_type error\n{extra}\n"
    )
    return path


@dataclass
class Broker:
    """A running Mosquitto; `extra_conf` lines are appended to a minimal config."""

    port: int = field(default_factory=free_port)
    extra_conf: str = ""
    proc: subprocess.Popen | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ate-mosq-")))

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """Mosquitto's own log (errors: a persistence folder it cannot write, a bad config line)."""
        return self.workdir / "mosquitto.log"

    def start(self) -> "Broker":
        conf = write_config(self.workdir / "mosquitto.conf", self.port, self.extra_conf)
        with self.log.open("ab") as err:  # a file, never an unread pipe: a full pipe would stall the broker
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_port(self.port, proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; mosquitto said: {self.log_tail() or 'nothing'}") from exc
        return self

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, down_s: float = 0.5) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


SHIPPED_BRIDGE = Path(__file__).resolve().parents[1] / "docker" / "mosquitto" / "bridge.conf"


def bridge_section(site_port: int, shipped: Path = SHIPPED_BRIDGE) -> str:
    """The shipped bridge (docker/mosquitto/bridge.conf, from `connection` on) pointed at a private
    site broker on loopback, without its credentials; everything else exactly as shipped."""
    lines = shipped.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("connection "))
    out = []
    for line in lines[start:]:
        if line.startswith("address "):
            line = f"address 127.0.0.1:{site_port}"
        elif line.startswith(("remote_username ", "remote_password ")):
            continue
        out.append(line)
    return "\n".join(out)


def start_bridged(timeout: float = 15.0) -> tuple[Broker, Broker]:
    """A site Mosquitto and an edge-local one bridged to it by the shipped bridge; returns once the
    bridge is up (the local broker's retained notification says 1)."""
    import threading

    from askexpert.mqtt import MqttClient
    from askexpert.settings import CommonSettings

    site = Broker().start()
    local = Broker(extra_conf=bridge_section(site.port)).start()
    up = threading.Event()
    probe = MqttClient(CommonSettings(broker=local.url), "listener", "bridge-probe", announce=False)
    probe.subscribe("$SYS/broker/connection/+/state", lambda m: up.set() if m.payload == b"1" else None)
    probe.start()
    ok = up.wait(timeout)
    probe.stop()
    if ok:
        return site, local
    local.stop()
    site.stop()
    raise TimeoutError("the bridge did not connect")


def spawn(module: str, *args: str, **popen: object) -> subprocess.Popen:
    """Start a component (`expert_hub.cli`, `edge_node.cli`) as its own process."""
    import sys

    return subprocess.Popen([sys.executable, "-m", module, *args], **popen)  # type: ignore[call-overload]


def hub_args(pack: str, broker: str, hub_id: str, *extra: str) -> list[str]:
    """`expert-hub run` arguments for a hub on a private broker (no periodic stats); `extra` last."""
    return ["run", "--pack", str(pack), "--broker", broker, "--hub-id", hub_id, "--stats-interval-s", "0", *extra]


def edge_args(pack: str, broker: str, node_id: str, frames: int, *extra: str, source: str = "dataset:fashion-mnist:test") -> list[str]:
    """`edge-node run` arguments for `frames` frames of `source` (no periodic stats); `extra` last."""
    return [
        "run",
        "--pack",
        str(pack),
        "--broker",
        broker,
        "--node-id",
        node_id,
        "--source",
        source,
        "--max-frames",
        str(frames),
        "--stats-interval-s",
        "0",
        *extra,
    ]


def spawn_quiet(module: str, *args: str) -> subprocess.Popen:
    """A component whose output nobody reads (a benchmark's hub)."""
    return spawn(module, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class EdgeRun:
    """An `edge-node` started by `spawn_edge` and the file its run summary goes to."""

    proc: subprocess.Popen
    summary: Path


def spawn_edge(*args: str) -> EdgeRun:
    """`edge-node` writing its run summary to a temporary file (`--summary-json`), read by `edge_summary`."""
    fd, path = tempfile.mkstemp(prefix="edge-summary-", suffix=".json")
    os.close(fd)
    proc = spawn("edge_node.cli", *args, "--summary-json", path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return EdgeRun(proc, Path(path))


def edge_summary(edge: EdgeRun, timeout: float = 1800) -> dict:
    """Wait for an edge started by `spawn_edge`; its summary (frames, sources, elapsed_s) as a dict."""
    code = edge.proc.wait(timeout=timeout)
    try:
        text = edge.summary.read_text()
    finally:
        edge.summary.unlink(missing_ok=True)
    if code or not text:
        raise RuntimeError(f"edge-node exited with code {code} and no summary")
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    """`python -m askexpert.localbroker [--port N]`: a development broker (loopback, anonymous, no
    persistence, Nagle off) on a port of your choice or a free one, until Ctrl-C."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m askexpert.localbroker", description=main.__doc__)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    a = p.parse_args(argv)
    broker = Broker(port=a.port or free_port()).start()
    print(f"broker at {broker.url} (Ctrl-C stops it)", flush=True)
    try:
        broker.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
