"""How long a frames message spent on its way beyond the quickest of its node's, without a shared clock.

A frame's deadline (`dl`) is counted from its arrival at the hub, since the edge's clock need not
agree with the hub's. But a message can arrive late: held in a broker's queue, in TCP buffers
behind a stalled link (a partition that kept the connection open), or behind a hub that reads
slower than it is sent to. Each message carries its send time on the sender's clock (`ts`); the
difference `arrival - ts` is the clock offset plus the time in transit. Its smallest value seen
from a node is that node's offset plus the quickest transit, so what a message took beyond that is
its extra delay, whatever the offset. The baseline creeps up slowly (CREEP_PER_S) so that clock
drift, or a path that became slower for good, is followed.
"""

from __future__ import annotations

CREEP_PER_S = 1e-3  # the baseline may rise 1 ms per second: clocks drift far less (NTP: under 0.1 ms/s)
MAX_NODES = 10_000  # baselines kept: node names come from the network


class TransitClock:
    def __init__(self, creep_per_s: float = CREEP_PER_S, max_nodes: int = MAX_NODES) -> None:
        self.creep_per_s, self.max_nodes = creep_per_s, max_nodes
        self._base: dict[str, tuple[float, float]] = {}  # node -> (baseline offset s, when: monotonic s)

    def delay(self, node: str, sent: float, arrived: float, now: float) -> float:
        """Seconds a message from `node`, sent at `sent` (its clock) and arrived at `arrived` (ours,
        wall), took beyond that node's quickest; `now` is monotonic."""
        offset = arrived - sent
        base, since = self._base.get(node, (offset, now))
        base = min(offset, base + (now - since) * self.creep_per_s)
        if node in self._base or len(self._base) < self.max_nodes:
            self._base[node] = (base, now)
        return offset - base
