"""`edge-node collect`: keep what an edge offloads, with its experts' answers, for on-site learning.

A consumer beside the edge: it reads the node's frames (`<prefix>/experts/+/frames/<node>`, the
images the experts see) and its final labels (`<prefix>/nodes/<node>/labels`), publishes nothing,
joins each offloaded frame with its label by run and frame id, and keeps the pair in a
collected-frames folder (askexpert/collected.py) that `trainer learn` reads, when the rules allow.
The rules, checked in this order, each skip counted by reason (meta.json, `ate_collected_frames_total`):

    excluded-frames   the frame id is in an operator's excluded range
    excluded-class    the expert or the edge called it an excluded class
    band              the edge's confidence is outside [edge_conf_min, edge_conf_max]
    expert-conf       the expert was less sure than min_expert_conf
    class-cap         per_class frames of that expert label are kept already
    rate              more than max_per_s a second (a token bucket holding one second's worth)
    full              the folder reached max_kept or max_mib

A frame whose label is not an expert's (the deadline fell back to the edge) has no answer and is
never kept, nor is a frames message whose images are not the pack's input shape (`malformed`).
Messages are handled on a worker thread, never in the MQTT network thread (at most 64 MiB of them
wait); the frames waiting for their label are bounded (max_pending, oldest dropped and counted).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from askexpert import metrics
from askexpert.collected import CollectedError, CollectedWriter, Kept
from askexpert.log import get_logger
from askexpert.protocol import LabelMsg, ProtocolError, decode_frames, decode_label, frames_topic, labels_topic, parse_frames_topic
from askexpert.subscriber import Subscriber
from edge_node.settings import CollectSettings

log = get_logger("edge_node.collect")
QUEUE_BYTES = 64 * 2**20  # payloads waiting for the worker (a replay's burst); beyond it they are dropped and counted


@dataclass
class Rules:
    """What may be kept (the module docstring says in which order they are checked)."""

    edge_conf: tuple[float, float] = (0.0, 1.0)
    min_expert_conf: float = 0.0
    per_class: int = 0  # 0: no cap
    max_per_s: float = 0.0  # 0: no limit
    exclude_classes: frozenset[int] = frozenset()
    exclude_frames: tuple[tuple[int, int], ...] = ()  # inclusive ranges of frame ids


def parse_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """'0-99,500-599,7' -> ((0, 99), (500, 599), (7, 7)); ValueError for anything else."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if a < 0 or b < a:
            raise ValueError(f"frame range {part!r}: want FIRST-LAST with 0 <= FIRST <= LAST")
        out.append((a, b))
    return tuple(out)


def rules_from(s: CollectSettings, classes: list[str]) -> Rules:
    """The settings as rules; ValueError names a bad class or range."""
    names = [c.strip() for c in s.exclude_classes.split(",") if c.strip()]
    if unknown := [n for n in names if n not in classes]:
        raise ValueError(f"--exclude-classes: {unknown} are not classes of the pack ({classes})")
    return Rules(
        edge_conf=(s.edge_conf_min, s.edge_conf_max),
        min_expert_conf=s.min_expert_conf,
        per_class=s.per_class,
        max_per_s=s.max_per_s,
        exclude_classes=frozenset(classes.index(n) for n in names),
        exclude_frames=parse_ranges(s.exclude_frames),
    )


@dataclass
class Sampler:
    """The rules applied frame by frame: `skip(kept)` says why not (None: keep), `taken` records a keep."""

    rules: Rules
    clock: Callable[[], float] = time.monotonic
    per_class: Counter = field(default_factory=Counter)
    _tokens: float = -1.0  # the rate limit's bucket, full at the first frame
    _t: float = 0.0

    def skip(self, k: Kept) -> str | None:
        r = self.rules
        if any(a <= k.frame_id <= b for a, b in r.exclude_frames):
            return "excluded-frames"
        if k.label in r.exclude_classes or k.edge_label in r.exclude_classes:
            return "excluded-class"
        if not r.edge_conf[0] <= k.edge_conf <= r.edge_conf[1]:
            return "band"
        if k.conf < r.min_expert_conf:
            return "expert-conf"
        if r.per_class and self.per_class[k.label] >= r.per_class:
            return "class-cap"
        if r.max_per_s and self._refill() < 1.0:
            return "rate"
        return None

    def _refill(self) -> float:
        now, burst = self.clock(), max(1.0, self.rules.max_per_s)
        self._tokens = burst if self._tokens < 0 else min(burst, self._tokens + (now - self._t) * self.rules.max_per_s)
        self._t = now
        return self._tokens

    def taken(self, k: Kept) -> None:
        self.per_class[k.label] += 1
        if self.rules.max_per_s:
            self._tokens -= 1.0


class Collector:
    """Joins one node's offloaded frames with their labels and keeps them by the rules."""

    def __init__(self, s: CollectSettings, rules: Rules, writer: CollectedWriter) -> None:
        self.s, self.writer, self.sampler = s, writer, Sampler(rules)
        spec = writer.meta["input"]  # the pack's: frames of another shape could never be learned from
        self.shape = (spec["size"], spec["size"], spec["channels"])
        self.labels_topic = labels_topic(s.prefix, s.node_id)
        self.pending: OrderedDict[tuple[str, int], tuple[np.ndarray, str | None]] = OrderedDict()
        self.counts: Counter = Counter()
        self.inbox: queue.Queue = queue.Queue()
        self.sub = _Inbox(s, self.inbox, frames_topic(s.prefix, "+", s.node_id), self.labels_topic)
        self.worker = threading.Thread(target=self._work, name="collect", daemon=True)

    def start(self) -> "Collector":
        self.worker.start()
        self.sub.start()  # subscribed when it returns: every offload from now on is seen
        self.writer.write_meta({"state": "collecting", **self.report()})
        log.info("collecting", node=self.s.node_id, out=str(self.s.out))
        return self

    def stop(self) -> dict:
        """Unsubscribe, handle what already arrived, close the folder; returns the counts."""
        self.sub.stop()
        self.inbox.put(None)
        self.worker.join()
        if self.sub.dropped:
            self.counts["dropped-queue-full"] = self.sub.dropped
        self.writer.close({"state": "closed", **self.report()})
        log.info("collection closed", **self.report())
        return self.report()

    def report(self) -> dict:
        return {"counts": dict(self.counts), "per_class": {str(c): n for c, n in sorted(self.sampler.per_class.items())}}

    def _work(self) -> None:
        while (item := self.inbox.get()) is not None:
            topic, payload = item
            self.sub.done(len(payload))
            try:
                if topic == self.labels_topic:
                    self._on_label(decode_label(payload))
                else:
                    self._on_frames(parse_frames_topic(self.s.prefix, topic)[0], payload)
            except ProtocolError as exc:
                self._count("malformed")
                log.warning("malformed message skipped", topic=topic[:200], error=str(exc)[:200])
            except (OSError, CollectedError) as exc:  # a full disk or an unwritable folder: said, counted, never a crash
                self._count("write-failed")
                log.error("could not keep a frame", error=str(exc)[:200])

    def _on_frames(self, expert: str, payload: bytes) -> None:
        batch = decode_frames(payload, shape=self.shape)
        for fid, image in zip(batch.frame_ids.tolist(), batch.images):
            self.pending[(batch.run, fid)] = (image.copy(), batch.pack_version)
            if len(self.pending) > self.s.max_pending:
                self.pending.popitem(last=False)
                self._count("dropped-pending-full")

    def _on_label(self, msg: LabelMsg) -> None:
        self.counts["seen"] += 1
        if msg.expert is None:
            return
        self.counts["offloaded"] += 1
        held = self.pending.pop((msg.run, msg.frame_id), None)
        if msg.source != "expert":
            return self._count("no-answer")
        if held is None:
            return self._count("frame-not-seen")
        image, version = held
        kept = Kept(
            node=msg.node,
            run=msg.run,
            frame_id=msg.frame_id,
            label=msg.label,
            conf=msg.conf,
            edge_label=msg.edge_label,
            edge_conf=msg.edge_conf,
            expert=msg.expert,
            hub=msg.hub,
            pack_version=version,
            hub_pack_version=msg.pack_version,
            t_capture=msg.t_capture,
        )
        why = self.sampler.skip(kept) or ("full" if not self.writer.add(image, kept) else None)
        if why is not None:
            return self._count(why)
        self.sampler.taken(kept)
        self._count("kept")
        if self.writer.count % 100 == 0:
            self.writer.write_meta(self.report())
        return None

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        metrics.COLLECTED.labels(self.s.node_id, outcome).inc()


class _Inbox(Subscriber):
    """Hands every message to the collector's worker; drops (and counts) what would queue more
    than QUEUE_BYTES."""

    def __init__(self, s: CollectSettings, inbox: queue.Queue, *topics: str) -> None:
        super().__init__(s, *topics, keep_raw=False)
        self.inbox, self.node, self.dropped, self.queued = inbox, s.node_id, 0, 0
        self._lock = threading.Lock()

    def accept(self, topic: str, payload: bytes) -> None:
        with self._lock:
            full = self.queued + len(payload) > QUEUE_BYTES
            self.queued += 0 if full else len(payload)
        if full:
            self.dropped += 1
            metrics.COLLECTED.labels(self.node, "dropped-queue-full").inc()
        else:
            self.inbox.put((topic, payload))

    def done(self, size: int) -> None:
        """The worker took a payload of `size` bytes off the queue."""
        with self._lock:
            self.queued -= size


# ---------------------------------------------------------------------------------------- command line
def add_collect_parser(sub) -> None:
    """`edge-node collect --node-id NODE --out DIR [rules]`: until SIGINT/SIGTERM."""
    from askexpert.settings import add_settings_arguments

    p = sub.add_parser("collect", help="keep a node's offloaded frames with the experts' answers, for `trainer learn`")
    add_settings_arguments(p, CollectSettings)
    p.set_defaults(func=_cmd_collect)


def _cmd_collect(args) -> int:
    from askexpert.cli_common import fail, load_pack, load_settings
    from askexpert.lifecycle import capture_signals

    s = load_settings(CollectSettings, args)
    m = load_pack(s.pack).manifest
    try:
        rules = rules_from(s, m.classes)
        meta = {"pack": m.pack_id, "classes": m.classes, "input": m.input.model_dump(), "node": s.node_id, "rules": _rules_meta(rules)}
        writer = CollectedWriter(s.out, meta, s.max_kept, int(s.max_mib * 2**20))
    except (ValueError, CollectedError, OSError) as exc:
        fail(str(exc))
    stop = threading.Event()
    with capture_signals(stop.set):
        collector = Collector(s, rules, writer).start()
        stop.wait()
    print(json.dumps({"out": str(s.out), **collector.stop()}))
    return 0


def _rules_meta(r: Rules) -> dict:
    return {
        "edge_conf": list(r.edge_conf),
        "min_expert_conf": r.min_expert_conf,
        "per_class": r.per_class,
        "max_per_s": r.max_per_s,
        "exclude_classes": sorted(r.exclude_classes),
        "exclude_frames": [list(x) for x in r.exclude_frames],
    }
