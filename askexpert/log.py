"""structlog setup: JSON lines when not on a terminal (for log shippers), pretty when on one."""

from __future__ import annotations

import logging
import sys
import threading
import time

import structlog


def setup_logging(level: str = "info", json_logs: bool | None = None) -> None:
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


class Throttle:
    """Lets a repeated log line through once per `interval_s` per key: a flood of bad messages is
    counted by the metrics, not written out one line each (that would fill disks and stall pipes)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._muted: dict[str, int] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> int | None:
        """None: stay quiet. Else log now; the number is how many were kept quiet since the last line."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._muted[key] = self._muted.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._muted.pop(key, 0)
