"""Adaptive tau: keep this edge's offloads within what the expert hubs can answer before the deadline.

The operator's tau (TauControl, retained on MQTT) stays the upper bound and `tau_min` the lower
one. Between them the edge picks, every UPDATE_S, the tau below which `budget / frame rate` of
its recent frames' confidences lie, so that it offloads about `budget` frames per second:

- with a `target_offload_rate`, the budget is that rate;
- else from the hubs' load messages (fresh ones only, of this pack): together they can answer
  `spare = HEADROOM * sum(capacity) - sum(queue) / deadline` frames/s in time (the queue must
  drain within a deadline) and are asked `sum(arrivals)`. Every edge scales its own offload rate
  by sqrt(spare / arrivals), at most x2 per update (damped, since a hub's load lags by about one
  period), so the fleet's offloads converge on the spare capacity, shared as the offloads were;
- following loads, the budget is at most the hubs' whole spare capacity, and at most twice what
  was answered in the window: a starting edge grows into the capacity from below (slow start);
- when frames fell back (deadline) in the window, or answers came later than half the deadline in
  the last period (the hubs queue: the early sign, before anything falls back), the budget is at
  most the rate the experts answered in time: whatever the loads say, more would only queue;
- without any of these (no fresh loads, no target, no fallbacks) the budget is unbounded: the
  operator's tau.

The budget never drops below MIN_SHARE of the frame rate, so an edge keeps probing the hubs and
recovers when load clears. Everything is a function of counts and an injected clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from askexpert import metrics
from askexpert.log import Throttle, get_logger
from askexpert.protocol import LOAD_STALE_INTERVALS, HubLoad, ProtocolError, decode_hub_load, parse_hub_load_topic

log = get_logger("edge_node.adaptive_tau")

UPDATE_S = 0.5  # how often the effective tau is recomputed
WINDOW_S = 2.0  # recent frames, offloads and results that the rates and the quantile come from
MAX_WINDOW = 16384  # frames kept at most (beyond ~8000 frames/s the window is shorter than WINDOW_S)
HEADROOM = 0.9  # the share of the hubs' capacity to fill: queues stay short
MAX_STEP = 2.0  # the budget grows at most this much per update
MIN_SHARE = 0.01  # the budget is at least this share of the frame rate
MAX_HUBS = 256  # hub loads tracked at most: a flood of made-up hub ids cannot grow memory
LOG_STEP = 0.05  # a change of the effective tau this large is logged
SLOW_SHARE = 0.5  # an answer later than this share of the deadline says the hubs queue: stop growing


@dataclass
class _Load:
    load: HubLoad
    received: float  # on this edge's clock: the hubs' clocks are not trusted


class AdaptiveTau:
    """Thread-safe: the gate calls `tau` and `record` (inference thread), replies and deadlines call
    `result`, hub loads arrive through `on_message` (paho's network thread)."""

    def __init__(
        self,
        node: str,
        pack: str,
        tau_min: float,
        deadline_s: float,
        target_rate: float | None = None,
        prefix: str = "ate/v1",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node, self.pack, self.tau_min, self.deadline_s = node, pack, tau_min, deadline_s
        self.target_rate, self.prefix, self.clock = target_rate, prefix, clock
        self._lock = threading.Lock()
        self._frames: deque[tuple[float, float, bool]] = deque(maxlen=MAX_WINDOW)  # (t, conf, offloaded)
        self._results: deque[tuple[float, bool, float]] = deque(maxlen=MAX_WINDOW)  # (t, answered in time, latency s)
        self._loads: dict[str, _Load] = {}
        self._first: float | None = None
        self._next_update = -math.inf
        self._quantile = 1.0  # the unclamped tau that meets the budget (1.0: no bound)
        self._logged: float | None = None
        self._throttle = Throttle()
        self.rejected = 0
        self.state: dict[str, Any] = {"offload_budget_per_s": None, "hubs": 0}

    # ------------------------------------------------------------ the gate
    def tau(self, tau_operator: float) -> float:
        """The effective tau for the next batch: in [tau_min, tau_operator] (the operator's wins
        when it is set below tau_min)."""
        now = self.clock()
        with self._lock:
            if now >= self._next_update:
                self._update(now)
                self._next_update = now + UPDATE_S
            effective = min(max(self._quantile, self.tau_min), tau_operator)
            if self._logged is None or abs(effective - self._logged) >= LOG_STEP:
                self._logged = effective
                log.info(
                    "effective tau",
                    node=self.node,
                    tau_effective=round(effective, 4),
                    tau_operator=tau_operator,
                    tau_min=self.tau_min,
                    **self.state,
                )
        return effective

    def record(self, conf: np.ndarray, offloaded: np.ndarray) -> None:
        """A gated batch: each frame's top-1 confidence and whether it was offloaded."""
        now = self.clock()
        with self._lock:
            if self._first is None:  # the next batch is gated by a controller that has seen this one
                self._first = self._next_update = now
            self._frames.extend((now, float(c), bool(o)) for c, o in zip(conf, offloaded))

    def result(self, answered: bool, latency_s: float = 0.0) -> None:
        """An offloaded frame's outcome: the expert's label (True) or a deadline fallback (False),
        and how long after capture it came."""
        now = self.clock()
        with self._lock:
            self._results.append((now, answered, latency_s))

    # ------------------------------------------------------------ hub loads
    def on_message(self, message: Any) -> None:
        """A message on <prefix>/hubs/+/load: validated; an empty one (a hub that stopped) forgets it."""
        try:
            hub = parse_hub_load_topic(self.prefix, message.topic)
            if not message.payload:
                with self._lock:
                    self._loads.pop(hub, None)
                return
            load = decode_hub_load(message.payload)
        except ProtocolError as exc:
            return self._reject("bad-load", error=str(exc)[:200])
        if load.hub != hub:  # the topic is what the broker's ACL vouches for
            return self._reject("load-hub-mismatch", hub=load.hub, topic=message.topic[:200])
        self.observe(load)

    def observe(self, load: HubLoad) -> None:
        if load.pack != self.pack:  # a hub of another pack on a shared broker: normal, not an attack
            return
        now = self.clock()
        with self._lock:
            if load.hub not in self._loads and len(self._loads) >= MAX_HUBS:
                self._drop_stale(now)
            full = load.hub not in self._loads and len(self._loads) >= MAX_HUBS
            if not full:
                self._loads[load.hub] = _Load(load, now)
                self._next_update = -math.inf  # news: the next batch is gated with it (at most one update a batch)
        if full:
            self._reject("too-many-hubs", hub=load.hub)

    def _reject(self, reason: str, **info: object) -> None:
        self.rejected += 1
        metrics.REJECTED.labels("edge", reason).inc()
        if (quiet := self._throttle.ready(reason)) is not None:
            log.warning("hub load ignored", reason=reason, not_logged_since_last=quiet, **info)

    def _drop_stale(self, now: float) -> None:
        for hub in [h for h, e in self._loads.items() if now - e.received > LOAD_STALE_INTERVALS * e.load.interval_s]:
            del self._loads[hub]

    # ------------------------------------------------------------ the controller
    def _update(self, now: float) -> None:
        cut = now - WINDOW_S
        while self._frames and self._frames[0][0] < cut:
            self._frames.popleft()
        while self._results and self._results[0][0] < cut:
            self._results.popleft()
        self._drop_stale(now)
        if not self._frames or self._first is None:
            self._quantile = 1.0
            return
        start = max(cut, self._first)
        if len(self._frames) == self._frames.maxlen:
            start = max(start, self._frames[0][0])
        span = max(now - start, 1e-3)
        n = len(self._frames)
        frame_rate = n / span
        own_rate = sum(1 for _, _, o in self._frames if o) / span
        floor = MIN_SHARE * frame_rate
        fell = sum(1 for _, ok, _ in self._results if not ok)
        answered_rate = (len(self._results) - fell) / span
        # answers that took over half the deadline in the last update period: the hubs are queueing
        slow = sum(1 for t, ok, lat in self._results if ok and t >= now - UPDATE_S and lat > SLOW_SHARE * self.deadline_s)
        budget = self._budget(max(own_rate, floor), max(answered_rate, floor))
        if fell or slow:  # more than what was answered would only queue up, and then fall back
            budget = answered_rate if budget is None else min(budget, answered_rate)
        if budget is None:
            self._quantile = 1.0
        else:
            budget = max(budget, MIN_SHARE * frame_rate)
            share = budget / frame_rate
            if share >= 1.0:
                self._quantile = 1.0
            else:  # k frames of n lie strictly below the k-th smallest confidence: k / n ~ share
                confs = np.fromiter((c for _, c, _ in self._frames), dtype=np.float64, count=n)
                k = int(share * n)
                self._quantile = float(np.partition(confs, k)[k])
        self.state = {
            "offload_budget_per_s": None if budget is None else round(budget, 3),
            "frame_rate": round(frame_rate, 3),
            "offload_rate": round(own_rate, 3),
            "fallbacks_in_window": fell,
            "slow_answers": slow,
            **self.state_hubs(),
        }

    def _budget(self, own_rate: float, answered_rate: float) -> float | None:
        """Offloads/s from the target or the hubs' loads (scaling `own_rate`); None when neither says anything.
        Following loads, the budget is also at most MAX_STEP times what was answered in the window
        (a slow start): an edge that starts, or comes back from fallbacks, grows into the spare
        capacity from below instead of flooding the hubs for the period their loads lag."""
        if self.target_rate is not None:
            return self.target_rate
        loads = [e.load for e in self._loads.values()]
        if not any(ld.capacity is not None for ld in loads):
            return None  # no hub has measured itself yet
        spare = HEADROOM * sum(ld.capacity or 0.0 for ld in loads) - sum(ld.queue for ld in loads) / self.deadline_s
        demand = sum(ld.arrivals for ld in loads)
        scale = spare / demand if demand > 0 else math.inf
        # never more than the hubs can answer in all: an edge that starts (or hubs that were idle) would
        # otherwise scale an unbounded rate until the hubs' next loads show its arrivals
        return min(own_rate * min(MAX_STEP, math.sqrt(max(scale, 0.0))), max(spare, 0.0), MAX_STEP * answered_rate)

    def state_hubs(self) -> dict[str, Any]:
        loads = [e.load for e in self._loads.values()]
        return {
            "hubs": len(loads),
            "hub_capacity_per_s": round(sum(ld.capacity or 0.0 for ld in loads), 3),
            "hub_arrivals_per_s": round(sum(ld.arrivals for ld in loads), 3),
            "hub_queue": sum(ld.queue for ld in loads),
        }

    def snapshot(self) -> dict[str, Any]:
        """For stats and /healthz: the controller's inputs and budget at its last update."""
        with self._lock:
            return {"tau_min": self.tau_min, "target_offload_rate": self.target_rate, "load_rejected": self.rejected, **self.state}
