"""Queues between a producer and the inference thread: what the edge's micro-batches and the hub's
batches share (dynamic batching, and newest-only admission when the producer outruns inference)."""

from __future__ import annotations

import queue
import time
from typing import Any


def fill_batch(q: queue.Queue, first: Any, max_size: int, max_wait_s: float, end: Any = None) -> tuple[list, bool]:
    """`first` plus what is queued, up to `max_size` items, waiting only while there is load.

    The wait adapts to load: when nothing is queued behind `first` the batch goes at once (a lone
    request never pays the wait); when items are queued, it takes them and waits up to `max_wait_s`
    after `first` for more, since under load more are on their way.
    Returns (batch, ended): `ended` is True when the `end` sentinel was taken (it is not in the batch).
    """
    batch = [first]
    deadline = time.monotonic() + max_wait_s
    while len(batch) < max_size:
        remaining = deadline - time.monotonic()
        try:
            item = q.get(timeout=remaining) if remaining > 0 and len(batch) > 1 else q.get_nowait()
        except queue.Empty:
            break
        if end is not None and item is end:
            return batch, True
        batch.append(item)
    return batch, False


def put_newest(q: queue.Queue, item: Any) -> int:
    """Put without ever blocking: when the queue is full, drop the oldest waiting items to make room
    (a live camera's newest frame matters most; an overloaded hub's oldest frame is the one least
    likely to be answered in time). Returns how many items were dropped."""
    dropped = 0
    while True:
        try:
            q.put_nowait(item)
            return dropped
        except queue.Full:
            try:
                q.get_nowait()
                dropped += 1
            except queue.Empty:  # the consumer took one meanwhile
                pass
