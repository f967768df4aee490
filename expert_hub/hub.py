"""The expert hub: one subscription per expert topic, one inference thread, dynamic batches.

paho's network thread only checks the payload size and enqueues the raw message in its sender's
line (expert_hub/fair_queue.py: nodes take turns, and a flood evicts its own messages first;
on_message never blocks, and never decodes an image). A message holds one or more frames of one edge for one
expert (protocol v2). The inference thread takes messages until it has max_batch frames, waiting
at most max_wait after the first, decodes and validates each message as a whole (bounded: sizes,
counts and shape before any pixel; the JPEG header before decoding), runs the valid frames through
the expert library in one call (a shared trunk runs once for all experts of the batch; each
expert's tail runs on its own rows) and answers each edge run with one message per batch, on that
node's replies topic under the hub's own name. `answer(jobs)` is that batch's inference and reply
payloads alone, with no MQTT (as Triton's `execute`); `_run` publishes what it returns.

Deadlines: a frame carries the milliseconds its edge still waits (`deadline_ms`, at send). The hub
counts them from the frame's arrival, less what the message took on its way beyond the quickest
of its node's (expert_hub/transit.py: no clock has to agree with the edge's, and a frame held in a
broker or behind a stalled link is known as late), cut to max_time_left_ms, and, before any inference, drops a frame
whose time left is less than one frame's share of a batch now (`ate_expired_frames_total`). Under
overload, when the batch at hand could not all be answered in time, it runs the largest batch of
the frames with the most time left that can be (a batch of n takes about n frames' time) and holds
the rest for the next: it spends its time on frames that can still make it. Frames without one
(`--no-frame-deadline`) keep the MQTT expiry, whole seconds.

Pack reload (askexpert/reload.py): a new pack's experts are installed beside the running ones and
taken between two batches; frames routed with the old pack version are answered by the old
experts until none has come for `reload_drain_s`, then those are freed.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import paho.mqtt.client as mqtt

from askexpert import metrics
from askexpert.backends import ExpertLibrary
from askexpert.log import Throttle, get_logger
from askexpert.mqtt import MqttClient
from askexpert.ops import StatsPublisher
from askexpert.pack import Pack
from askexpert.protocol import (
    LOAD_STALE_INTERVALS,
    FrameBatch,
    ProtocolError,
    ReplyBatch,
    decode_frames,
    frames_filter,
    hub_load_topic,
    parse_frames_topic,
    replies_topic,
)
from askexpert.routing import softmax
from expert_hub.fair_queue import FairQueue
from expert_hub.load import LoadMeter
from expert_hub.settings import HubSettings
from expert_hub.transit import TransitClock

log = get_logger("expert_hub")
SERVICE_SMOOTHING = 0.2  # weight of the newest batch in the hub's estimate of what a frame takes
MAX_TRACKED_NODES = 10_000  # rate-limit buckets kept: node names come from the network


@dataclass
class Raw:
    """A frames message as it arrived, not yet decoded."""

    topic: str
    payload: bytes
    expiry_s: int | None  # its MQTT Message Expiry as the broker passed it on (time left there)
    t_arrival: float  # monotonic
    t_wall: float = field(default_factory=time.time)  # the same moment on the wall clock (expert_hub/transit.py)


@dataclass
class Served:
    """One pack version's experts as the hub runs them."""

    pack: Pack
    library: ExpertLibrary
    last_used: float = field(default_factory=time.monotonic)  # a draining pack is freed once unused a while


@dataclass
class Part:
    """One admitted frames message: its frames, the expert and the pack version that answer them."""

    frames: FrameBatch
    expert: str
    served: Served
    t_arrival: float  # monotonic


@dataclass(slots=True)
class Job:
    """One frame of a Part, as the batcher orders and holds it."""

    part: Part
    i: int  # its row in part.frames
    expires: float  # monotonic; the edge has given up on it after this (inf: no end known)


@dataclass
class Reply:
    """One answer message (to one edge run), ready to publish."""

    topic: str
    payload: bytes


@dataclass
class HubStats:
    received: int = 0  # messages
    frames: int = 0  # frames in the messages admitted
    answered: int = 0
    rejected: int = 0
    expired: int = 0
    capped: int = 0  # frames whose claimed time left was cut to max_time_left_ms
    rate_limited: int = 0  # frames refused: their node beyond node_rate_limit
    dropped: int = 0
    batches: int = 0


def time_left(raw: Raw, frames: FrameBatch) -> np.ndarray:
    """Seconds each frame's edge waits from its arrival: its own deadline, else the MQTT expiry."""
    end = float(raw.expiry_s or math.inf)
    if frames.deadline_ms is None:
        return np.full(len(frames), end)
    return np.minimum(frames.deadline_ms.astype(np.float64) / 1000, end)


def turns(jobs: list[Job]) -> list[Job]:
    """Sender nodes take turns: each node's frames most time left first, then the first of every
    node, the second of every node, ... (nodes in order of their first frame): one node's flood
    cannot push another's frames out of a batch."""
    by_node: dict[str, list[Job]] = {}
    for j in jobs:
        by_node.setdefault(j.part.frames.node, []).append(j)
    queues = [sorted(q, key=lambda j: j.expires, reverse=True) for q in by_node.values()]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


class ExpertHub:
    def __init__(self, settings: HubSettings, pack: Pack, library: ExpertLibrary, client: MqttClient) -> None:
        self.s, self.client = settings, client
        self.current = Served(pack, library)
        self._draining: Served | None = None  # the previous pack, while frames routed with it come
        self._incoming: Served | None = None  # a reloaded pack, taken before the next batch
        self._swap_lock = threading.Lock()
        spec = pack.manifest.input
        self.shape = (spec.size, spec.size, spec.channels)
        self.stats = HubStats()
        self.per_expert: Counter[str] = Counter()
        self.stop_event = threading.Event()
        self._queue: FairQueue[Raw] = FairQueue(settings.queue_size, key=lambda raw: raw.topic.rsplit("/", 1)[-1])  # per sender node
        self._warned_packs: set[str] = set()
        self._log_throttle = Throttle()
        self._frame_s = 0.0  # what one frame of a batch takes now (smoothed): batches are sized by it
        self._held: list[Job] = []  # admitted, in time, left out of the last batch to keep it in time
        self._buckets: dict[str, tuple[float, float]] = {}  # node -> (tokens, when): node_rate_limit
        self.transit = TransitClock()
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self.load = LoadMeter(settings.hub_id, pack.pack_id, settings.load_interval_s)
        for by in ("deadline", "expiry"):
            metrics.EXPIRED.labels(settings.hub_id, by)  # at 0 until the first: alert rules see it from the start
        self._load_topic = hub_load_topic(settings.prefix, settings.hub_id)
        self._load_publisher: StatsPublisher | None = None

    @property
    def pack(self) -> Pack:
        return self.current.pack

    @property
    def library(self) -> ExpertLibrary:
        return self.current.library

    def start(self) -> None:
        for key in self.library.keys:
            self.client.subscribe(frames_filter(self.s.prefix, key, self.s.share_group), self._on_frame, qos=1)
        self._thread.start()
        if self.s.load_interval_s > 0:  # retained, so a new edge sees it at once; expiring, so a dead hub's goes
            expiry = math.ceil(LOAD_STALE_INTERVALS * self.s.load_interval_s)
            self._load_publisher = StatsPublisher(
                self.client,
                self._load_topic,
                lambda: self.load.sample(self._queue.qsize()).to_dict(),
                self.s.load_interval_s,
                qos=0,
                retain=True,
                expiry_s=expiry,
            ).start()
        log.info("hub serving", experts=self.library.keys, share_group=self.s.share_group, **self.pack_report())

    def pack_report(self) -> dict:
        """The pack it serves with, and the one still draining after a reload."""
        draining = self._draining
        return {"pack": self.pack.pack_id, "pack_version": self.pack.version} | (
            {"pack_draining": draining.pack.version} if draining is not None else {}
        )

    def install(self, pack: Pack, library: ExpertLibrary) -> None:
        """Serve a new pack version (built and warmed up) from the next batch on (reload thread)."""
        if pack.pack_id != self.pack.pack_id or set(library.keys) != set(self.library.keys):
            raise ValueError("a reloaded pack must route as the running one and serve the same experts")
        with self._swap_lock:
            self._incoming = Served(pack, library)

    def health(self) -> dict:
        """For /healthz: healthy while connected and the inference thread runs."""
        alive = self._thread.is_alive()
        refused = dict(self.client.refused)
        healthy = self.client.connected.is_set() and alive and not refused and not self.client.id_conflicts
        return {
            "healthy": healthy,
            "connected": self.client.connected.is_set(),
            "inference_thread": alive,
            "subscriptions_refused": refused,
            "id_conflicts": self.client.id_conflicts,
            "queue": self._queue.qsize(),
            **self.pack_report(),
            **self.client.broker_report(),
            **vars(self.stats),
        }

    def snapshot(self) -> dict:
        """For the periodic stats message."""
        return {
            "hub": self.s.hub_id,
            "queue": self._queue.qsize(),
            "per_expert": dict(self.per_expert),
            "capacity_per_s": self.load.capacity,
            **self.pack_report(),
            **self.client.broker_report(),
            **vars(self.stats),
        }

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=5)
        if self._load_publisher is not None:
            self._load_publisher.stop()
            self.client.publish(self._load_topic, b"", qos=0, retain=True)  # no capacity left behind

    def _reject(self, reason: str, **info: object) -> list[Job]:
        """Count and log (at a bounded rate) a message not answered; no jobs come of it."""
        self.stats.rejected += 1
        metrics.REJECTED.labels("hub", reason).inc()
        if (quiet := self._log_throttle.ready(reason)) is not None:
            log.warning("frames message rejected", reason=reason, not_logged_since_last=quiet, **info)
        return []

    # ------------------------------------------------------------ network thread
    def _on_frame(self, message: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        if len(message.payload) > self.s.max_payload:
            self._reject("oversized", bytes=len(message.payload), topic=message.topic[:200])
            return None
        expiry = getattr(message.properties, "MessageExpiryInterval", None) if message.properties else None
        raw = Raw(message.topic, message.payload, expiry, time.monotonic())
        if dropped := self._queue.put(raw):  # overloaded: the oldest messages of the node that sends the most go
            self.stats.dropped += dropped
            metrics.DROPS.labels("hub", "queue-full").inc(dropped)
        return None

    # ------------------------------------------------------------ inference thread
    def _admit(self, raw: Raw) -> list[Job]:
        """Decode and validate one message: its frames as jobs, or none (counted, logged) when it
        is not a message to answer. Every check is per message: the topic's node is the one the
        broker's ACL vouches for, and the answer goes to that node's replies topic only."""
        try:
            expert, sender = parse_frames_topic(self.s.prefix, raw.topic)
            frames = decode_frames(raw.payload, max_bytes=self.s.max_payload, shape=self.shape)
        except ProtocolError as exc:
            return self._reject(exc.reason, error=str(exc)[:200], topic=raw.topic[:200])
        except (TypeError, ValueError, OverflowError) as exc:  # whatever else a hostile payload causes
            return self._reject("malformed", error=str(exc)[:200], topic=raw.topic[:200])
        if frames.node != sender:
            return self._reject("node-mismatch", node=frames.node, topic=raw.topic[:200])
        if frames.pack != self.pack.pack_id:
            self.stats.rejected += 1
            metrics.REJECTED.labels("hub", "wrong-pack").inc()
            if frames.pack not in self._warned_packs and len(self._warned_packs) < 32:  # once per pack, bounded
                self._warned_packs.add(frames.pack)
                log.error("frames from a different pack ignored", their_pack=frames.pack, our_pack=self.pack.pack_id, node=frames.node)
            return []
        if expert not in self.library.keys:
            return self._reject("unknown-expert", expert=expert)
        self.stats.frames += len(frames)
        self.load.arrived(len(frames))
        if (allowed := self._allowance(frames.node, len(frames), raw.t_arrival)) == 0:
            return []
        part = Part(frames, expert, self._pack_for(frames.pack_version, raw.t_arrival), raw.t_arrival)
        left, cap = time_left(raw, frames)[:allowed], self.s.max_time_left_ms / 1000
        if capped := int(np.count_nonzero(left > cap)):  # no sender buys priority by claiming it waits longer
            self.stats.capped += capped
            metrics.CAPPED.labels(self.s.hub_id).inc(capped)
        # the time it spent on its way beyond its node's quickest is gone from what is left
        late = max(0.0, self.transit.delay(frames.node, frames.t_sent, raw.t_wall, raw.t_arrival))
        ends = raw.t_arrival - late + np.minimum(left, cap)
        return [Job(part, i, end) for i, end in enumerate(ends.tolist())]

    def _allowance(self, node: str, n: int, now: float) -> int:
        """How many of a node's n frames fit its rate limit now (all without one): a token bucket
        of node_rate_limit frames/s holding at most one second's worth; the rest are counted."""
        rate = self.s.node_rate_limit
        if rate is None:
            return n
        tokens, since = self._buckets.get(node, (rate, now))
        tokens = min(rate, tokens + (now - since) * rate)
        allowed = min(n, int(tokens))
        if len(self._buckets) < MAX_TRACKED_NODES or node in self._buckets:
            self._buckets[node] = (tokens - allowed, now)
        if refused := n - allowed:  # per hub: a label per node name from the network would grow without bound
            self.stats.rate_limited += refused
            metrics.RATE_LIMITED.labels(self.s.hub_id).inc(refused)
            if (quiet := self._log_throttle.ready("rate-limited")) is not None:
                log.warning("frames beyond the node's rate limit refused", node=node, frames=refused, not_logged_since_last=quiet)
        return allowed

    def _pack_for(self, version: str | None, now: float) -> Served:
        """The draining pack for frames its version routed, else the current one (also for frames
        of a version this hub never had: an edge reloaded first; the routing is the same)."""
        draining = self._draining
        if draining is not None and version == draining.pack.version:
            draining.last_used = now
            return draining
        return self.current

    def _gather(self) -> list[Job]:
        """The frames held from the last batch, then queued messages' frames up to max_batch (the
        last message's surplus is held for the next). A batch waits for more (max_wait) only while
        messages are queued behind its first: a lone message never pays the wait."""
        jobs, self._held = self._held, []
        try:
            raw = self._queue.get_nowait() if jobs else self._queue.get(timeout=0.2)
        except queue.Empty:
            return jobs
        ends, taken = time.monotonic() + self.s.max_wait_ms / 1000, 1
        while True:
            jobs += self._admit(raw)
            if len(jobs) >= self.s.max_batch:
                break
            remaining = ends - time.monotonic()
            try:
                raw = self._queue.get(timeout=remaining) if remaining > 0 and taken > 1 else self._queue.get_nowait()
            except queue.Empty:
                break
            taken += 1
        return jobs

    def _batch(self) -> list[Job]:
        jobs = self._gather()
        now = time.monotonic()
        if late := [j for j in jobs if j.expires - now <= self._frame_s]:
            self._expired(late)  # not even alone would it be answered in time
            jobs = [j for j in jobs if j.expires - now > self._frame_s]
        return self._in_time(jobs, now)

    def _in_time(self, jobs: list[Job], now: float) -> list[Job]:
        """The batch, in arrival order, when all of it can be answered in time (no overload): at
        most max_batch, the rest held. Else, with sender nodes taking turns (`turns`: each node's
        frames most time left first), every frame that keeps the batch in time (a batch of n takes
        about n frames' time); the others held for the next batch, at most max_batch of them in the
        same turns (the rest dropped as late)."""
        cap = self.s.max_batch
        if not jobs or min(j.expires for j in jobs) - now > len(jobs) * self._frame_s:
            self._held = jobs[cap:]
            return jobs[:cap]
        batch: list[Job] = []
        rest: list[Job] = []
        least = math.inf  # the least time left of a frame in the batch
        for j in turns(jobs):
            size = len(batch) + 1
            if size <= cap and min(least, j.expires - now) > size * self._frame_s:
                batch.append(j)
                least = min(least, j.expires - now)
            else:
                rest.append(j)
        self._held = rest[:cap]
        if shed := rest[cap:]:
            self._expired(shed)
        return batch

    def _expired(self, late: list[Job]) -> None:
        """Count (by what set the end: the frame's deadline or only the MQTT expiry) and log at a bounded rate."""
        self.stats.expired += len(late)
        metrics.DROPS.labels("hub", "expired").inc(len(late))
        by_deadline = sum(j.part.frames.deadline_ms is not None for j in late)
        for by, n in (("deadline", by_deadline), ("expiry", len(late) - by_deadline)):
            if n:
                metrics.EXPIRED.labels(self.s.hub_id, by).inc(n)
        if (quiet := self._log_throttle.ready("expired")) is not None:
            log.warning("frames too late to answer dropped before inference", count=len(late), not_logged_since_last=quiet)

    def _switch(self) -> None:
        """Between batches: take a reloaded pack; free the previous one once nothing routed with it came for a while."""
        with self._swap_lock:
            new, self._incoming = self._incoming, None
        now = time.monotonic()
        if new is not None:
            if self._draining is not None:
                log.info("draining pack freed: a newer one came", version=self._draining.pack.version)
            self.current.last_used = now
            self._draining, self.current = self.current, new
            log.info("pack switched", **self.pack_report())
        elif self._draining is not None and now - self._draining.last_used > self.s.reload_drain_s:
            log.info("drained pack freed", version=self._draining.pack.version)
            self._draining = None

    def _serve(self) -> None:
        depth = metrics.QUEUE_DEPTH.labels("hub", "frames")
        while not self.stop_event.is_set():
            self._switch()
            jobs = self._batch()
            depth.set(self._queue.qsize())
            if not jobs:
                continue
            try:
                self._run(jobs)
            except Exception:  # a failing batch must not stop the hub
                log.exception("batch failed", size=len(jobs))
                metrics.DROPS.labels("hub", "inference-error").inc(len(jobs))

    def answer(self, jobs: list[Job]) -> tuple[list[Reply], float]:
        """One batch's inference and reply payloads, nothing published (as Triton's `execute`):
        returns one reply per edge run (and pack version) and the inference time (ms). Jobs of a
        draining pack run on its experts, the rest on the current pack's."""
        t0 = time.monotonic()
        probs = np.empty((len(jobs), len(self.pack.manifest.classes)), np.float32)
        by_served: dict[int, list[int]] = {}
        for r, j in enumerate(jobs):
            by_served.setdefault(id(j.part.served), []).append(r)
        for rows in by_served.values():
            images = np.stack([jobs[r].part.frames.images[jobs[r].i] for r in rows])
            library = jobs[rows[0]].part.served.library
            probs[rows] = softmax(library(images, [jobs[r].part.expert for r in rows]).astype(np.float64))
        infer_ms = (time.monotonic() - t0) * 1000
        labels = probs.argmax(axis=1)
        conf = probs[np.arange(len(jobs)), labels]
        queue_ms = np.array([(t0 - j.part.t_arrival) * 1000 for j in jobs])
        groups: dict[tuple, list[int]] = {}
        for r, j in enumerate(jobs):
            groups.setdefault((j.part.frames.node, j.part.frames.run, id(j.part.served)), []).append(r)
        replies = []
        for (node, run, _), rows in groups.items():
            reply = ReplyBatch(
                node=node,
                run=run,
                frame_ids=np.array([jobs[r].part.frames.frame_ids[jobs[r].i] for r in rows]),
                experts=[jobs[r].part.expert for r in rows],
                labels=labels[rows],
                conf=conf[rows],
                queue_ms=queue_ms[rows],
                infer_ms=round(infer_ms, 3),
                batch=len(jobs),
                pack_version=jobs[rows[0]].part.served.pack.version,
            )
            replies.append(Reply(replies_topic(self.s.prefix, node, self.s.answers_as), reply.encode()))
        return replies, infer_ms

    def _run(self, jobs: list[Job]) -> None:
        t0 = time.monotonic()
        replies, infer_ms = self.answer(jobs)
        self.stats.batches += 1
        metrics.BATCH_SIZE.labels("hub", "experts").observe(len(jobs))
        metrics.INFER_MS.labels("hub", "experts").observe(infer_ms)
        for r in replies:  # QoS 0: a reply lost with a connection falls back at its deadline, as a late one does
            self.client.publish(r.topic, r.payload, qos=0)
        keys = Counter(j.part.expert for j in jobs)
        for key, n in keys.items():  # per batch, not per frame
            metrics.HUB_FRAMES.labels(self.s.hub_id, key).inc(n)
        self.per_expert.update(keys)
        self.stats.answered += len(jobs)
        busy = time.monotonic() - t0
        self.load.served(len(jobs), busy)
        self._frame_s += SERVICE_SMOOTHING * (busy / len(jobs) - self._frame_s)
