"""The edge node: source -> generalist -> confidence gate -> final label or top-k offload.

Threads: the source reader (bounded queue: newest-only for live sources, backpressure for files
and datasets), the inference loop (micro-batches), the gate (one thread after inference: labels and
offloads of a batch are published while the next batch runs, in frame order), paho's network
thread (replies: decode, pop the pending frame, publish its label; never blocks), and the deadline
thread (edge-fallback labels).

A reloaded pack (SIGHUP, askexpert/reload.py) is installed by `install` and taken between two
batches: every frame is gated by one pack version, named in its label (`pack_version`; an expert
label names the hub's) and in its offload, so the hub answers it with the same version while it has it.
"""

from __future__ import annotations

import math
import queue
import secrets
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import paho.mqtt.client as mqtt

from askexpert import metrics
from askexpert.backends import Classifier
from askexpert.batching import fill_batch, put_newest
from askexpert.frames import fit_frame
from askexpert.log import Throttle, get_logger
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import (
    LABEL_SOURCES,
    MAX_BATCH_FRAMES,
    MAX_DEADLINE_MS,
    FrameBatch,
    LabelMsg,
    ProtocolError,
    decode_replies,
    hub_load_filter,
    labels_topic,
    parse_replies_topic,
    replies_filter,
)
from askexpert.quality import WINDOW_ANSWERS, WINDOW_FRAMES, SlidingShare
from askexpert.routing import Decision, decide
from edge_node.adaptive_tau import AdaptiveTau
from edge_node.pending import Offload, PendingTable
from edge_node.settings import EdgeSettings
from edge_node.sources import Frame, Source
from edge_node.tau_control import TauControl

log = get_logger("edge_node")
_END = object()
GATE_AHEAD = 2  # batches inferred but not yet gated


@dataclass
class EdgeModel:
    """The pack and the generalist built from it: swapped together, between batches."""

    pack: Pack
    classifier: Classifier


@dataclass
class EdgeStats:
    frames: int = 0
    edge: int = 0
    expert: int = 0
    fallback: int = 0
    late_replies: int = 0
    dropped: int = 0
    rejected: int = 0
    unacknowledged: int = 0  # labels the broker never acknowledged (QoS 1)
    elapsed_s: float = 0.0


class EdgeNode:
    def __init__(self, settings: EdgeSettings, pack: Pack, classifier: Classifier, client: MqttClient) -> None:
        self.s, self.client = settings, client
        self.model = EdgeModel(pack, classifier)
        self._incoming: EdgeModel | None = None  # a reloaded pack, taken before the next batch
        self._pack_tau_sets = 0  # tau follows a reloaded pack's until an operator sets it
        m = pack.manifest
        self.tau = TauControl(client, settings.prefix, settings.node_id, m.tau if settings.tau is None else settings.tau)
        self.adaptive = (
            AdaptiveTau(
                node=settings.node_id,
                pack=pack.pack_id,
                tau_min=settings.tau_min,
                deadline_s=settings.deadline_s,
                target_rate=settings.target_offload_rate,
                prefix=settings.prefix,
            )
            if settings.tau_mode == "adaptive"
            else None
        )
        self.tau_effective = self.tau.value  # what the last batch was gated with
        self.k = settings.top_k or m.k
        self.node = settings.node_id
        self.run_id = secrets.token_hex(4)  # in every label and frames message: frame ids restart with the process
        self.labels_topic = labels_topic(settings.prefix, self.node)
        self.replies_filter = replies_filter(settings.prefix, self.node)
        self.stats = EdgeStats()
        self.pending = PendingTable(self._on_deadline)
        self._log_throttle = Throttle()
        self.stop_event = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._count_lock = threading.Lock()
        self._metric_labels = {s: metrics.LABELS.labels(self.node, s) for s in LABEL_SOURCES}
        self._metric_latency = {s: metrics.LABEL_LATENCY_MS.labels(self.node, s) for s in LABEL_SOURCES}
        self._metric_rtt = metrics.OFFLOAD_RTT_MS.labels(self.node)
        self._live = False
        self._window = 0  # offloads a lossless source may keep unanswered (0: no limit); run() sets it
        self._source: Source | None = None
        self._last_frame = time.monotonic()  # run() resets it; a frozen live source ages it
        metrics.FRAME_AGE_S.labels(self.node).set_function(self.frame_age_s)
        metrics.TAU_EFFECTIVE.labels(self.node).set_function(lambda: self.tau_effective)
        self._quality_metrics(pack)

    def _quality_metrics(self, pack: Pack) -> None:
        """The label-free quality signals (askexpert/quality.py): alpha over the last gated frames,
        the expert's disagreement over the last answers (windows sized as the pack's band states
        them), and the band of the pack gating now, while it gates at the band's tau."""
        band = pack.manifest.quality
        self.alpha_window = SlidingShare(band.alpha.window if band else WINDOW_FRAMES)
        self.disagreement_window = SlidingShare(band.disagreement.window if band else WINDOW_ANSWERS)
        self._gated = metrics.GATED.labels(self.node)
        for signal, window in (("alpha", self.alpha_window), ("disagreement", self.disagreement_window)):
            metrics.QUALITY_WINDOW.labels(self.node, signal).set_function(window.share)
            for bound in ("low", "expected", "high"):
                metrics.QUALITY_BAND.labels(self.node, signal, bound).set_function(lambda s=signal, b=bound: self._band(s, b))

    def _band(self, signal: str, bound: str) -> float:
        band = self.pack.manifest.quality
        if band is None or abs(self.tau_effective - band.tau) > 1e-9:
            return math.nan
        return getattr(getattr(band, signal), bound)

    # ------------------------------------------------------------ public
    @property
    def pack(self) -> Pack:
        return self.model.pack

    def install(self, pack: Pack, classifier: Classifier) -> None:
        """Gate with a new pack version (loaded, verified, warmed up) from the next batch on; its tau
        too, unless tau was given (--tau) or set over MQTT. Called by the reload thread."""
        if pack.pack_id != self.pack.pack_id:
            raise ValueError("a reloaded pack must route as the running one")
        self._incoming = EdgeModel(pack, classifier)
        if self.s.tau is None and self.tau.accepted == self._pack_tau_sets:
            self._pack_tau_sets += 1
            self.tau.set(pack.manifest.tau, source="pack")

    def pack_report(self) -> dict:
        return {"pack": self.pack.pack_id, "pack_version": self.pack.version}

    def frame_age_s(self) -> float:
        """Seconds since the source gave its last frame (since the start, before the first)."""
        return time.monotonic() - self._last_frame

    def health(self) -> dict:
        """For /healthz: healthy while connected and the stream is being processed; a live source
        that gave no frame for max_frame_age_s (frozen camera, stream retrying) is unhealthy."""
        age = self.frame_age_s()
        fresh = not self._live or age <= self.s.max_frame_age_s
        return {
            "healthy": self.client.connected.is_set() and not self.stop_event.is_set() and not self.client.id_conflicts and fresh,
            "last_frame_age_s": round(age, 3),
            "connected": self.client.connected.is_set(),
            "id_conflicts": self.client.id_conflicts,
            "pending_offloads": len(self.pending),
            **self.pack_report(),
            **self._tau_report(),
            **self.client.broker_report(),
            **vars(self.stats),
        }

    def snapshot(self) -> dict:
        """For the periodic stats message."""
        return {
            "node": self.node,
            **self._tau_report(),
            "pending_offloads": len(self.pending),
            "queue": self._queue.qsize(),
            **self.pack_report(),
            **self.client.broker_report(),
            **vars(self.stats),
        }

    def _tau_report(self) -> dict:
        """The operator's tau, the one frames are gated with, and (adaptive) why."""
        report = {"tau": self.tau.value, "tau_effective": self.tau_effective, "tau_mode": self.s.tau_mode}
        return report | ({"adaptive": self.adaptive.snapshot()} if self.adaptive else {})

    def run(self, source: Source) -> EdgeStats:
        """Process the source to its end (or max_frames, or stop()); every frame gets one label."""
        self.tau.start()
        self.client.subscribe(self.replies_filter, self._on_reply, qos=1)
        if self.adaptive:
            self.client.subscribe(hub_load_filter(self.s.prefix), self.adaptive.on_message, qos=0)
        self.pending.start()
        # Live: newest frames only. Lossless: one batch ahead, so a frame waits at most about one batch
        # before inference (a deeper queue only adds latency when the source outruns the model), and
        # at most offload_window offloads unanswered: the stream waits for its hubs, never falls back
        # for lack of their speed.
        self._queue = queue.Queue(maxsize=self.s.live_queue if source.live else self.s.batch_size)
        self._window = 0 if source.live else self.s.offload_window
        self._live, self._last_frame, self._source = source.live, time.monotonic(), source
        reader = threading.Thread(target=self._read, args=(source,), name="source", daemon=True)
        reader.start()
        log.info("edge running", source=source.description, live=source.live, tau=self.tau.value, k=self.k, **self.pack_report())
        t0 = time.monotonic()
        try:
            self._infer_loop()
        finally:
            self.stop_event.set()
            source.close()
            self.pending.wait_empty(self.s.deadline_s + 1.0)
            self.pending.stop()
            if not self.client.flush(timeout=10):
                self.stats.unacknowledged = self.client.unacknowledged()
                log.error("labels not acknowledged by the broker before exit", count=self.stats.unacknowledged)
            self.stats.elapsed_s = round(time.monotonic() - t0, 3)
        log.info("edge done", **vars(self.stats))
        return self.stats

    def stop(self) -> None:
        self.stop_event.set()
        if self._source is not None:
            self._source.interrupt()  # a live source waiting to reopen would otherwise hold the reader

    # ------------------------------------------------------------ source
    def _read(self, source: Source) -> None:
        n = 0
        try:
            for frame in source.frames():
                if self.stop_event.is_set():
                    break
                self._put(frame, source.live)
                n += 1
                if self.s.max_frames and n >= self.s.max_frames:
                    break
        except Exception:  # a broken source ends the stream, logged
            log.exception("source failed", source=source.description)
        finally:
            self._queue.put(_END)

    def _put(self, frame: Frame, live: bool) -> None:
        metrics.FRAMES.labels(self.node).inc()
        self._last_frame = time.monotonic()
        if not live:
            while not self.stop_event.is_set():
                try:
                    self._queue.put(frame, timeout=0.2)  # backpressure: never drop a file frame
                    return
                except queue.Full:
                    continue
            return
        # newest-only; the end marker is never among the dropped: this thread puts it last
        if dropped := put_newest(self._queue, frame):
            before = self.stats.dropped
            self.stats.dropped += dropped
            metrics.DROPS.labels("edge", "live-queue-full").inc(dropped)
            if before // 100 != self.stats.dropped // 100 or before == 0:
                log.warning("live source outruns the edge; dropping oldest frames", dropped=self.stats.dropped)

    # ------------------------------------------------------------ inference
    def _next_batch(self) -> tuple[list[Frame], bool]:
        first = self._queue.get()
        if first is _END:
            return [], True
        return fill_batch(self._queue, first, self.s.batch_size, self.s.batch_wait_ms / 1000, end=_END)

    def _infer_loop(self) -> None:
        """Batches through the generalist; each batch's gate runs on one gate thread, in order, while
        the next batch is inferred (publishing labels is Python work that would otherwise add to
        every batch). At most GATE_AHEAD batches wait for the gate: it cannot fall behind unbounded."""
        depth = metrics.QUEUE_DEPTH.labels("edge", "frames")
        gating: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate") as gate:
            while True:
                batch, ended = self._next_batch()
                depth.set(self._queue.qsize())
                if self._incoming is not None:  # between batches: a reloaded pack
                    self.model, self._incoming = self._incoming, None
                    log.info("pack switched", **self.pack_report())
                model = self.model
                if batch:
                    images = np.stack([fit_frame(f.image, model.pack.manifest.input) for f in batch])
                    t_batch, t0 = time.time(), time.perf_counter()
                    logits = model.classifier(images)
                    infer_ms = (time.perf_counter() - t0) * 1000
                    metrics.INFER_MS.labels("edge", "generalist").observe(infer_ms)
                    metrics.BATCH_SIZE.labels("edge", "generalist").observe(len(batch))
                    while len(gating) >= GATE_AHEAD:
                        gating.popleft().result()  # re-raises what the gate raised
                    decision = decide(logits, model.pack.manifest.partition, self.k)
                    gating.append(gate.submit(self._gate, batch, images, decision, (t_batch, infer_ms), model.pack.version))
                if ended:
                    break
            for done in gating:
                done.result()

    def _gate(self, batch: list[Frame], images: np.ndarray, d: Decision, timing: tuple[float, float], version: str) -> None:
        """Algorithm 1 (`askexpert.routing.decide`): conf >= tau is final; else the routed expert.
        With adaptive tau, tau is the effective one for this batch (edge_node/adaptive_tau.py).
        `timing`: the batch's start (unix s) and inference (ms); `version`: the pack version that gated it."""
        t_batch, infer_ms = timing
        tau = self.adaptive.tau(self.tau.value) if self.adaptive else self.tau.value
        self.tau_effective = tau
        offloaded = d.offloaded(tau)
        if self.adaptive:
            self.adaptive.record(d.conf, offloaded)
        self._gated.inc(len(batch))
        for off in offloaded.tolist():
            self.alpha_window.add(off)
        sends: dict[str, list[tuple[int, Offload]]] = {}
        for i, frame in enumerate(batch):
            self.stats.frames += 1
            edge_label, conf = int(d.edge_label[i]), float(d.conf[i])
            item = Offload(
                frame_id=frame.frame_id,
                t_capture=frame.t_capture,
                edge_label=edge_label,
                edge_conf=conf,
                expert=str(d.expert[i]) if offloaded[i] else None,
                tau=tau,
                wait_ms=max(0.0, (t_batch - frame.t_capture) * 1000),
                infer_ms=infer_ms,
                pack_version=version,
            )
            if item.expert is not None:
                sends.setdefault(item.expert, []).append((i, item))
            else:
                self._publish_label(item, label=edge_label, conf=conf, source="edge")
        if sends:
            self._offload(sends, images, d, version)

    def _offload(self, sends: dict[str, list[tuple[int, Offload]]], images: np.ndarray, d: Decision, version: str) -> None:
        """Send a batch's offloads, one message per expert (protocol v2); their deadline starts now
        and travels in the frames (the hub drops a frame once too late to answer); without it
        (--no-frame-deadline), an MQTT expiry in whole seconds, never shorter than the deadline.
        A lossless source first waits for room in its offload window."""
        if self._window:
            self.pending.wait_room(sum(map(len, sends.values())), self._window, self.stop_event)
        deadline_ms = min(self.s.deadline_ms, MAX_DEADLINE_MS)
        expiry_s = None if self.s.frame_deadline else max(1, math.ceil(self.s.deadline_s))
        for expert, rows in sends.items():
            for at in range(0, len(rows), MAX_BATCH_FRAMES):
                chunk = rows[at : at + MAX_BATCH_FRAMES]
                idx = np.array([i for i, _ in chunk])
                items = [item for _, item in chunk]
                t_sent = time.monotonic()
                for item in items:
                    item.t_sent, item.deadline = t_sent, t_sent + self.s.deadline_s
                self.pending.add(items)
                top = d.topk[idx]
                frames = FrameBatch(
                    node=self.node,
                    run=self.run_id,
                    pack=self.pack.pack_id,
                    frame_ids=np.array([item.frame_id for item in items]),
                    t_capture=np.array([item.t_capture for item in items]),
                    topk=top,
                    topk_p=np.take_along_axis(d.probs[idx], top, axis=1),
                    images=images[idx],
                    deadline_ms=np.full(len(items), deadline_ms) if self.s.frame_deadline else None,
                    pack_version=version,
                )
                self.client.publish_frames(self.s.prefix, expert, frames, expiry_s)
                metrics.OFFLOADS.labels(self.node, expert).inc(len(items))

    # ------------------------------------------------------------ results
    def _reject_reply(self, reason: str, **info: object) -> None:
        self.stats.rejected += 1
        metrics.REJECTED.labels("edge", reason).inc()
        if (quiet := self._log_throttle.ready(reason)) is not None:
            log.warning("reply dropped; the deadline will fall back", reason=reason, not_logged_since_last=quiet, **info)

    def _on_reply(self, message: mqtt.MQTTMessage) -> None:
        """A hub's answers to frames of this node: each pops its pending frame (only for this run
        and the expert it was sent to) and becomes its label; anything else is counted, never a label."""
        try:
            _, hub = parse_replies_topic(self.s.prefix, message.topic)
            reply = decode_replies(message.payload)
        except ProtocolError as exc:
            return self._reject_reply("malformed-reply", error=str(exc)[:200])
        if reply.node != self.node or reply.run != self.run_id:
            # not answers to frames of this run: another run of this node (a restart reuses frame ids), or forged
            self.stats.late_replies += len(reply)
            metrics.LATE_REPLIES.labels(self.node).inc(len(reply))
            log.debug("replies for another run or node dropped", frames=len(reply), hub=hub)
            return None
        if int(reply.labels.max()) >= len(self.pack.manifest.classes):
            return self._reject_reply("bad-reply-label", label=int(reply.labels.max()))
        now = time.monotonic()
        for fid, expert, label, conf, queue_ms in zip(
            reply.frame_ids.tolist(), reply.experts, reply.labels.tolist(), reply.conf.tolist(), reply.queue_ms.tolist()
        ):
            item = self.pending.pop(fid, expert=expert)
            if item is None:
                self.stats.late_replies += 1
                metrics.LATE_REPLIES.labels(self.node).inc()
                continue
            rtt_ms = (now - item.t_sent) * 1000
            self._metric_rtt.observe(rtt_ms)
            self._count_answer(expert, disagrees=label != item.edge_label)
            self._publish_label(
                item,
                label=label,
                conf=conf,
                source="expert",
                pack_version=reply.pack_version,
                hub=hub,
                hub_queue_ms=queue_ms,
                hub_infer_ms=reply.infer_ms,
                network_ms=max(0.0, rtt_ms - queue_ms - reply.infer_ms),
            )
        return None

    def _count_answer(self, expert: str, disagrees: bool) -> None:
        metrics.EXPERT_ANSWERS.labels(self.node, expert).inc()
        if disagrees:
            metrics.DISAGREEMENTS.labels(self.node, expert).inc()
        self.disagreement_window.add(disagrees)

    def _on_deadline(self, item: Offload) -> None:
        self._publish_label(item, label=item.edge_label, conf=item.edge_conf, source="edge-fallback")

    def _publish_label(
        self,
        item: Offload,
        *,
        label: int,
        conf: float,
        source: str,
        pack_version: str | None = None,
        hub: str | None = None,
        **hub_parts: float,
    ) -> None:
        """A frame's final label: what the edge knew at gating comes from `item`; for an expert's
        answer, the version of the pack that answered, the hub that answered and `hub_parts` (where
        the rest of the latency went: LabelMsg's hub_queue_ms ... network_ms) from the reply."""
        parts = {"wait_ms": item.wait_ms, "infer_ms": item.infer_ms, **hub_parts}
        latency_ms = (time.time() - item.t_capture) * 1000
        msg = LabelMsg(
            node=self.node,
            frame_id=item.frame_id,
            label=label,
            label_name=self.pack.manifest.classes[label],
            conf=round(conf, 6),
            source=source,
            expert=item.expert,
            latency_ms=round(latency_ms, 3),
            t_capture=item.t_capture,
            edge_label=item.edge_label,
            edge_conf=round(item.edge_conf, 6),
            pack=self.pack.pack_id,
            run=self.run_id,
            tau=round(item.tau, 6),
            pack_version=pack_version or item.pack_version or None,
            hub=hub,
            **{k: round(v, 3) for k, v in parts.items()},
        )
        self.client.publish(self.labels_topic, msg.encode(), qos=1)
        self._metric_labels[source].inc()
        self._metric_latency[source].observe(latency_ms)
        if self.adaptive and source != "edge":
            self.adaptive.result(answered=source == "expert", latency_s=latency_ms / 1000)
        with self._count_lock:
            if source == "edge":
                self.stats.edge += 1
            elif source == "expert":
                self.stats.expert += 1
            else:
                self.stats.fallback += 1
