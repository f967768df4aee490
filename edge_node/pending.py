"""The table of offloaded frames waiting for an expert, with deadlines.

Exactly-once by construction: whoever pops a frame id (the reply or the deadline) publishes its
label; the other finds nothing and only counts a late reply.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Offload:
    """A gated frame: what its label needs, whoever publishes it (the gate for an edge label, with
    `expert` None; for a frame sent to an expert, the reply or the deadline)."""

    frame_id: int
    t_capture: float
    edge_label: int
    edge_conf: float
    expert: str | None
    tau: float  # the threshold it was gated with, for its label
    wait_ms: float  # capture to the start of its edge batch
    infer_ms: float  # the edge batch's inference
    pack_version: str = ""  # the pack version that gated it
    t_sent: float = 0.0  # time.monotonic() when offloaded (set as it is sent)
    deadline: float = 0.0  # time.monotonic(): t_sent + the edge's deadline


class PendingTable:
    def __init__(self, on_expired: Callable[[Offload], None]) -> None:
        self._items: dict[int, Offload] = {}
        self._heap: list[tuple[float, int]] = []
        self._cond = threading.Condition()
        self._on_expired = on_expired
        self._stop = False
        self._thread = threading.Thread(target=self._expire_loop, name="deadlines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, items: list[Offload]) -> None:
        """Offloads sent together (one frames message): one lock, one wake-up."""
        with self._cond:
            for item in items:
                self._items[item.frame_id] = item
                heapq.heappush(self._heap, (item.deadline, item.frame_id))
            self._cond.notify_all()

    def wait_room(self, n: int, window: int, stop: threading.Event) -> None:
        """Block until `n` more fit in `window` waiting frames (all of it when n > window), or
        until `stop`: a lossless stream waits for its hubs. Replies and deadlines make room."""
        need = max(0, window - n)
        with self._cond:
            while len(self._items) > need and not stop.is_set():
                self._cond.wait(0.2)

    def pop(self, frame_id: int, expert: str | None = None) -> Offload | None:
        """Take a waiting frame (only if it was offloaded to `expert`, when given)."""
        with self._cond:
            item = self._items.get(frame_id)
            if item is None or (expert is not None and item.expert != expert):
                return None
            del self._items[frame_id]
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._items, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=2)

    def _expire_loop(self) -> None:
        while True:
            expired: list[Offload] = []
            with self._cond:
                if self._stop:
                    return
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, fid = heapq.heappop(self._heap)
                    item = self._items.get(fid)
                    if item is not None and item.deadline <= now:
                        expired.append(self._items.pop(fid))
                if expired:
                    self._cond.notify_all()
                else:
                    timeout = (self._heap[0][0] - now) if self._heap else 0.5
                    self._cond.wait(min(max(timeout, 0.001), 0.5))
            for item in expired:  # outside the lock: publishing may take a moment
                self._on_expired(item)
