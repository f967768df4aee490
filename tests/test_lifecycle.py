"""The shared pieces of a component's life: signals, newest-only queues, the local broker's config."""

from __future__ import annotations

import os
import queue
import signal
import threading

from askexpert.batching import put_newest
from askexpert.lifecycle import capture_signals
from askexpert.localbroker import write_config


def test_first_signal_asks_to_stop_second_is_default_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    calls = []
    with capture_signals(lambda: calls.append("stop")):
        os.kill(os.getpid(), signal.SIGTERM)
        assert calls == ["stop"]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a second one ends the process
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is before


def test_off_the_main_thread_no_handler_is_installed():
    """As uvicorn does: Python refuses signal handlers off the main thread, so a component run in a
    worker thread (a test, an embedding program) leaves the signals to its host instead of failing."""
    before = signal.getsignal(signal.SIGTERM)
    seen: list = []

    def worker() -> None:
        try:
            with capture_signals(lambda: None):
                seen.append(signal.getsignal(signal.SIGTERM))
        except Exception as exc:  # what signal.signal raises off the main thread
            seen.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)
    assert seen == [before] and signal.getsignal(signal.SIGTERM) is before


def test_put_newest_drops_the_oldest_and_counts():
    q: queue.Queue = queue.Queue(maxsize=3)
    assert [put_newest(q, i) for i in range(5)] == [0, 0, 0, 1, 1]
    assert [q.get_nowait() for _ in range(3)] == [2, 3, 4]


def test_one_mosquitto_config_for_tests_and_demo(tmp_path):
    conf = write_config(tmp_path / "m.conf", 12345, "max_queued_messages 100000").read_text().splitlines()
    assert conf[:3] == ["listener 12345 127.0.0.1", "allow_anonymous true", "set_tcp_nodelay true"]
    assert "max_queued_messages 100000" in conf
