"""One component lifecycle for the edge and the hub, after uvicorn's `Server`: startup, the main
loop with signals captured, and shutdown, always in that order.

    startup     connect (status `starting`), load the models (a TensorRT build reports its progress
                in the status), /metrics, /healthz and stats, then status `online`
    main loop   the component's own work, until it ends (a finite source) or a signal asks it to stop
    shutdown    ops endpoints off, then `offline` (retained) and a clean disconnect

SIGINT and SIGTERM ask for a clean stop once; a second one exits at once (the default handler).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from askexpert.cli_common import fail
from askexpert.log import get_logger
from askexpert.mqtt import MqttClient
from askexpert.ops import StatsPublisher, start_ops_server
from askexpert.protocol import stats_topic
from askexpert.settings import CommonSettings

if TYPE_CHECKING:
    from askexpert.backends import Backend

log = get_logger("askexpert.lifecycle")
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def capture_signals(on_exit: Callable[[], None]) -> Iterator[None]:
    """Within the block, the first SIGINT/SIGTERM calls on_exit() (a second one kills: the default
    handler is back); the previous handlers are restored after it. Off the main thread (a component
    run inside a test or an embedding program) nothing is installed, as in uvicorn: Python only
    lets the main thread set handlers, and the signals are then the host's to handle."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: object) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        on_exit()

    previous = {sig: signal.signal(sig, handle) for sig in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Component(Protocol):
    """What the edge node and the expert hub give the lifecycle."""

    def load(self, backend: "Backend") -> None:
        """Load and warm up the models; runs while the status says `starting`."""

    def serve(self, should_exit: threading.Event) -> int:
        """The main loop: until the work ends or should_exit is set; returns the exit code."""

    def stop(self) -> None:
        """Ask the main loop to end soon (a signal came); must not block."""

    def health(self) -> dict: ...

    def snapshot(self) -> dict: ...


class Server:
    """Runs one component through startup, main loop and shutdown on one broker connection."""

    def __init__(self, settings: CommonSettings, client: MqttClient, connect_timeout_s: float = 0.0) -> None:
        self.settings, self.client, self.connect_timeout_s = settings, client, connect_timeout_s
        self.should_exit = threading.Event()
        self._stoppers: list[Callable[[], None]] = []

    def run(self, component: Component) -> int:
        """Startup, then the main loop with signals captured, then shutdown. A signal during startup
        (a model load, a TensorRT build: minutes) ends the process at once, as before any state is
        worth saving; the broker then publishes the will, `offline`."""

        def on_exit() -> None:
            self.should_exit.set()
            component.stop()

        self.startup(component)
        try:
            with capture_signals(on_exit):
                return self.main_loop(component)
        finally:
            self.shutdown()

    def startup(self, component: Component) -> None:
        from askexpert.backends import open_backend  # torch: only once the settings are good

        s, client = self.settings, self.client
        client.start()  # status `starting` while the models load
        try:
            backend = open_backend(s.backend, s.device, s.threads, s.precision)
            backend.on_status = client.publish_status
            component.load(backend)
        except (ImportError, RuntimeError, ValueError) as exc:
            client.stop()
            fail(f"backend {s.backend}: {exc}")
        if s.metrics_port:
            try:
                self._stoppers.append(start_ops_server(s.metrics_port, component.health).stop)
            except OSError as exc:  # the port is taken: say so in one line, leave the broker cleanly
                client.stop()
                fail(f"metrics port {s.metrics_port}: {exc}")
        if s.stats_interval_s > 0:
            topic = stats_topic(s.prefix, client.role, client.ident)
            self._stoppers.append(StatsPublisher(client, topic, component.snapshot, s.stats_interval_s).start().stop)
        if self.connect_timeout_s and not client.wait_connected(self.connect_timeout_s):
            log.warning("broker not reachable yet; going on, messages queue until it answers", broker=s.broker)
        client.publish_status("online")

    def main_loop(self, component: Component) -> int:
        return component.serve(self.should_exit)

    def shutdown(self) -> None:
        for stop in reversed(self._stoppers):
            stop()
        self._stoppers.clear()
        self.client.stop()
