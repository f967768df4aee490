"""The hub's waiting messages, one line per sender node, taken in turns.

One first-in-first-out queue for every sender would let a node that floods the hub put thousands
of messages ahead of another node's frame, which then waits past its deadline before the hub even
decodes it. Here each node has its own line; the inference thread takes one message from each
node in turn, and when all lines together hold `capacity` messages, the oldest message of the
longest line goes (that node is the one sending more than the hub can answer).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict, deque
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self, capacity: int, key: Callable[[T], str]) -> None:
        self.capacity, self.key = capacity, key
        self._lines: OrderedDict[str, deque[T]] = OrderedDict()  # nodes with messages, in turn order
        self._size = 0
        self._cond = threading.Condition()

    def put(self, item: T) -> int:
        """Queue `item` in its node's line without blocking; returns how many messages were dropped
        to make room (the oldest of the longest line)."""
        dropped = 0
        with self._cond:
            self._lines.setdefault(self.key(item), deque()).append(item)
            self._size += 1
            while self._size > self.capacity:
                node, line = max(self._lines.items(), key=lambda kv: len(kv[1]))
                line.popleft()
                self._size -= 1
                dropped += 1
                if not line:
                    del self._lines[node]
            self._cond.notify()
        return dropped

    def get(self, timeout: float | None = None) -> T:
        """The next node's oldest message (queue.Empty after `timeout` seconds with none; 0: no wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._size:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Empty
                self._cond.wait(left)
            node, line = next(iter(self._lines.items()))
            item = line.popleft()
            self._size -= 1
            if line:
                self._lines.move_to_end(node)  # its next message after every other node's
            else:
                del self._lines[node]
            return item

    def get_nowait(self) -> T:
        return self.get(0)

    def qsize(self) -> int:
        with self._cond:
            return self._size
