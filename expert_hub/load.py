"""The hub's load, measured for the load message that adaptive-tau edges follow.

Capacity is what the hub answers per second of work: answered frames over the time spent
answering them (batching included, so it rises as batches fill under load), smoothed over
intervals; demand is the arrival rate and the queue. Both come from counts the hub keeps anyway,
so the message costs nothing on the inference path. The clock is injected for tests.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from askexpert import metrics
from askexpert.protocol import HubLoad

SMOOTHING = 0.5  # weight of the newest interval in the capacity estimate


class LoadMeter:
    """Counts arrivals (network thread) and answered batches (inference thread); `sample` turns
    the counts since the previous sample into a HubLoad."""

    def __init__(self, hub: str, pack: str, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.hub, self.pack, self.interval_s, self.clock = hub, pack, interval_s, clock
        self._lock = threading.Lock()
        self._arrived = 0
        self._answered = 0
        self._busy_s = 0.0
        self._since = clock()
        self.capacity: float | None = None  # None until a batch has been answered

    def arrived(self, n: int = 1) -> None:
        with self._lock:
            self._arrived += n

    def served(self, n: int, busy_s: float) -> None:
        """`n` frames answered in `busy_s` seconds of work (inference and replies)."""
        with self._lock:
            self._answered += n
            self._busy_s += max(busy_s, 0.0)

    def sample(self, queue: int) -> HubLoad:
        now = self.clock()
        with self._lock:
            dt = max(now - self._since, 1e-6)
            if self._answered and self._busy_s > 0:
                rate = self._answered / self._busy_s
                self.capacity = rate if self.capacity is None else self.capacity + SMOOTHING * (rate - self.capacity)
            arrivals, busy = self._arrived / dt, min(1.0, self._busy_s / dt)
            self._arrived, self._answered, self._busy_s, self._since = 0, 0, 0.0, now
        capacity = None if self.capacity is None else round(self.capacity, 3)
        metrics.HUB_BUSY.labels(self.hub).set(busy)
        return HubLoad(self.hub, self.pack, capacity, round(arrivals, 3), queue, round(busy, 4), self.interval_s)
