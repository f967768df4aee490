"""The expert hub: one subscription per expert topic, one inference thread, dynamic batches.

paho's network thread only checks the payload size and enqueues the raw message (on_message
never blocks, and never decodes an image). The inference thread takes up to max_batch messages,
waiting at most max_wait after the first, decodes and validates them (bounded: the JPEG header is
checked before any pixel is decoded), runs the valid ones through
the expert library in one call (a shared trunk runs once for all experts of the batch; each
expert's tail runs on its own rows) and replies on each frame's Response Topic.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import paho.mqtt.client as mqtt

from askexpert import metrics
from askexpert.backends import ExpertLibrary
from askexpert.batching import fill_batch, put_newest
from askexpert.log import Throttle, get_logger
from askexpert.mqtt import MqttClient
from askexpert.ops import StatsPublisher
from askexpert.pack import Pack
from askexpert.protocol import (
    LOAD_STALE_INTERVALS,
    FrameMsg,
    ProtocolError,
    ReplyMsg,
    decode_frame,
    frames_filter,
    hub_load_topic,
    parse_frames_topic,
    replies_topic,
)
from askexpert.routing import softmax
from expert_hub.load import LoadMeter
from expert_hub.settings import HubSettings

log = get_logger("expert_hub")


@dataclass
class Raw:
    """A frames message as it arrived, not yet decoded."""

    topic: str
    payload: bytes
    properties: object
    t_arrival: float  # monotonic


@dataclass
class Job:
    frame: FrameMsg
    expert: str
    response_topic: str
    correlation: bytes | None
    t_arrival: float  # monotonic
    expires: float | None  # monotonic; the edge has given up on it after this


@dataclass
class HubStats:
    received: int = 0
    answered: int = 0
    rejected: int = 0
    expired: int = 0
    dropped: int = 0
    batches: int = 0


class ExpertHub:
    def __init__(self, settings: HubSettings, pack: Pack, library: ExpertLibrary, client: MqttClient) -> None:
        self.s, self.pack, self.library, self.client = settings, pack, library, client
        spec = pack.manifest.input
        self.shape = (spec.size, spec.size, spec.channels)
        self.stats = HubStats()
        self.per_expert: Counter[str] = Counter()
        self.stop_event = threading.Event()
        self._queue: queue.Queue[Raw] = queue.Queue(maxsize=settings.queue_size)
        self._warned_packs: set[str] = set()
        self._log_throttle = Throttle()
        self._thread = threading.Thread(target=self._serve, name="inference", daemon=True)
        self.load = LoadMeter(settings.hub_id, pack.pack_id, settings.load_interval_s)
        self._load_topic = hub_load_topic(settings.prefix, settings.hub_id)
        self._load_publisher: StatsPublisher | None = None

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
        log.info("hub serving", experts=self.library.keys, share_group=self.s.share_group, pack=self.pack.pack_id)

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
            **self.client.broker_report(),
            **vars(self.stats),
        }

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=5)
        if self._load_publisher is not None:
            self._load_publisher.stop()
            self.client.publish(self._load_topic, b"", qos=0, retain=True)  # no capacity left behind

    def _reject(self, reason: str, **info: object) -> None:
        self.stats.rejected += 1
        metrics.REJECTED.labels("hub", reason).inc()
        if (quiet := self._log_throttle.ready(reason)) is not None:
            log.warning("frame rejected", reason=reason, not_logged_since_last=quiet, **info)

    # ------------------------------------------------------------ network thread
    def _on_frame(self, message: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        self.load.arrived()
        if len(message.payload) > self.s.max_payload:
            return self._reject("oversized", bytes=len(message.payload), topic=message.topic[:200])
        raw = Raw(message.topic, message.payload, getattr(message, "properties", None), time.monotonic())
        if dropped := put_newest(self._queue, raw):  # overloaded: the oldest frames go
            self.stats.dropped += dropped
            metrics.DROPS.labels("hub", "queue-full").inc(dropped)
        return None

    # ------------------------------------------------------------ inference thread
    def _admit(self, raw: Raw) -> Job | None:
        """Decode and validate one message; None (counted, logged) when it is not a frame to answer."""
        try:
            expert, sender = parse_frames_topic(self.s.prefix, raw.topic)
            frame = decode_frame(raw.payload, max_bytes=self.s.max_payload)
        except (ProtocolError, TypeError, ValueError, OverflowError) as exc:  # whatever a hostile payload causes
            return self._reject("malformed", error=str(exc)[:200], topic=raw.topic[:200])
        if frame.node != sender:  # the topic's node is what the broker's ACL vouches for
            return self._reject("node-mismatch", node=frame.node, topic=raw.topic[:200])
        if frame.pack != self.pack.pack_id:
            self.stats.rejected += 1
            metrics.REJECTED.labels("hub", "wrong-pack").inc()
            if frame.pack not in self._warned_packs and len(self._warned_packs) < 32:  # once per pack, bounded
                self._warned_packs.add(frame.pack)
                log.error("frame from a different pack ignored", their_pack=frame.pack, our_pack=self.pack.pack_id, node=frame.node)
            return None
        if frame.image.shape != self.shape:
            return self._reject("wrong-shape", shape=frame.image.shape, want=self.shape)
        if expert not in self.library.keys:
            return self._reject("unknown-expert", expert=expert)
        response = getattr(raw.properties, "ResponseTopic", None)
        if not response:
            return self._reject("no-response-topic", node=frame.node)
        if response != replies_topic(self.s.prefix, frame.node):  # the hub answers only into the sender's replies
            return self._reject("foreign-response-topic", node=frame.node, response_topic=response[:200])
        expiry = getattr(raw.properties, "MessageExpiryInterval", None)
        return Job(
            frame,
            expert,
            response,
            getattr(raw.properties, "CorrelationData", None),
            raw.t_arrival,
            raw.t_arrival + expiry if expiry else None,
        )

    def _batch(self) -> list[Job]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        raws, _ = fill_batch(self._queue, first, self.s.max_batch, self.s.max_wait_ms / 1000)
        jobs = [j for j in map(self._admit, raws) if j is not None]
        now = time.monotonic()
        live = [j for j in jobs if j.expires is None or j.expires > now]
        if len(live) < len(jobs):
            self.stats.expired += len(jobs) - len(live)
            metrics.DROPS.labels("hub", "expired").inc(len(jobs) - len(live))
        return live

    def _serve(self) -> None:
        depth = metrics.QUEUE_DEPTH.labels("hub", "frames")
        while not self.stop_event.is_set():
            jobs = self._batch()
            depth.set(self._queue.qsize())
            if not jobs:
                continue
            try:
                self._run(jobs)
            except Exception:  # a failing batch must not stop the hub
                log.exception("batch failed", size=len(jobs))
                metrics.DROPS.labels("hub", "inference-error").inc(len(jobs))

    def _run(self, jobs: list[Job]) -> None:
        t0 = time.monotonic()
        images = np.stack([j.frame.image for j in jobs])
        keys = [j.expert for j in jobs]
        probs = softmax(self.library(images, keys).astype(np.float64))
        infer_ms = (time.monotonic() - t0) * 1000
        self.stats.batches += 1
        metrics.BATCH_SIZE.labels("hub", "experts").observe(len(jobs))
        metrics.INFER_MS.labels("hub", "experts").observe(infer_ms)
        labels = probs.argmax(axis=1)
        for j, label, p in zip(jobs, labels, probs):
            reply = ReplyMsg(
                node=j.frame.node,
                frame_id=j.frame.frame_id,
                label=int(label),
                conf=float(p[label]),
                expert=j.expert,
                hub=self.s.hub_id,
                queue_ms=round((t0 - j.t_arrival) * 1000, 3),
                infer_ms=round(infer_ms, 3),
                batch=len(jobs),
            )
            self.client.publish(j.response_topic, reply.encode(), qos=1, correlation=j.correlation)
        for key, n in Counter(keys).items():  # per batch, not per frame
            metrics.HUB_FRAMES.labels(self.s.hub_id, key).inc(n)
        self.per_expert.update(keys)
        self.stats.answered += len(jobs)
        self.load.served(len(jobs), time.monotonic() - t0)
