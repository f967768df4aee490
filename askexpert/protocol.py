"""Wire protocol v2: topics and payloads between edge nodes, expert hubs and label consumers.

Frames and replies are msgpack (compact, binary-safe) and travel in batches: the offloads of one
edge batch for one expert are one message, a hub's answers to one edge in one of its batches are
one message (one frame is a batch of one). Final labels, status and stats are JSON, one label per
frame, so that any MQTT subscriber can read them. Decoding validates everything and raises
ProtocolError, so a bad message is counted and dropped by the caller, never crashes it.

v1 -> v2 (README, "Topics and payloads"): frames and replies carry arrays of frames; the reply
topic names the answering hub; the run id and frame ids travel in the payload instead of MQTT v5
Response Topic and Correlation Data (what they cost per message, paho building and parsing
properties, was as much as a small expert's inference).
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import cv2
import msgpack
import numpy as np
from PIL import Image, UnidentifiedImageError

from askexpert.routing import parse_expert_key

VERSION = 2
DEFAULT_PREFIX = "ate/v1"
MAX_FRAME_BYTES = 4 * 1024 * 1024  # a frame payload larger than this is rejected unread
RAW_LIMIT_BYTES = 16 * 1024  # images up to this many bytes travel raw, larger ones as JPEG
LABEL_SOURCES = ("edge", "expert", "edge-fallback")
LATENCY_PARTS = ("wait_ms", "infer_ms", "hub_queue_ms", "hub_infer_ms", "network_ms")  # LabelMsg's latency breakdown
NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # node, hub and run ids, pack ids: short and printable
MAX_TOPK = 16
MAX_DEADLINE_MS = 60_000.0  # a frame may claim at most this much time left: a hostile value is bounded
MAX_BATCH_FRAMES = 256  # frames in one frames message
MAX_REPLY_FRAMES = 1024  # answers in one replies message: a hub's max_batch is bounded by it
MAX_BATCH_PIXELS = 64 * 1024 * 1024  # n * H * W * C of one frames message, checked before decoding


def check_name(value: str) -> str:
    """For settings: a node or hub id goes into topics and replies, so it must be a NAME_RE name."""
    if not NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not 1-64 letters, digits or _.:- (ids are part of MQTT topics)")
    return value


class ProtocolError(ValueError):
    """A payload that does not follow this protocol (malformed, oversized, wrong version);
    `reason` is what the receiver counts it as (ate_rejected_messages_total{reason})."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------- topics
def frames_topic(prefix: str, expert: str, node: str) -> str:
    """Where `node` sends frames for expert I: the node is in the topic, so the broker's ACL can
    let each edge user publish only under its own name (`pattern write .../frames/%u`)."""
    return f"{prefix}/experts/{expert}/frames/{node}"


def frames_filter(prefix: str, expert: str, share_group: str | None = None) -> str:
    """The hub's subscription for one expert (every node), shared across hubs when a group is given."""
    topic = f"{prefix}/experts/{expert}/frames/+"
    return f"$share/{share_group}/{topic}" if share_group else topic


@lru_cache(maxsize=4096)  # a hub sees the same few topics (experts x nodes) for every message
def parse_frames_topic(prefix: str, topic: str) -> tuple[str, str]:
    """'<prefix>/experts/0-2/frames/cam1' -> ('0-2', 'cam1') (ProtocolError for anything else)."""
    head = f"{prefix}/experts/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) != 3 or parts[1] != "frames" or not NAME_RE.fullmatch(parts[2]):
        raise ProtocolError(f"not a frames topic: {topic[:200]}")
    key, _, node = parts
    try:
        parse_expert_key(key)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    return key, node


def replies_topic(prefix: str, node: str, hub: str) -> str:
    """Where `hub` answers `node`: the hub in the topic is what the broker's ACL vouches for
    (`topic write .../nodes/+/replies/hub1` in hub1's block), so a label names who really answered."""
    return f"{prefix}/nodes/{node}/replies/{hub}"


def replies_filter(prefix: str, node: str) -> str:
    return f"{prefix}/nodes/{node}/replies/+"


def parse_replies_topic(prefix: str, topic: str) -> tuple[str, str]:
    """'<prefix>/nodes/cam1/replies/hub1' -> ('cam1', 'hub1') (ProtocolError for anything else)."""
    head = f"{prefix}/nodes/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) != 3 or parts[1] != "replies" or not all(NAME_RE.fullmatch(p) for p in parts[::2]):
        raise ProtocolError(f"not a replies topic: {topic[:200]}")
    return parts[0], parts[2]


def labels_topic(prefix: str, node: str) -> str:
    return f"{prefix}/nodes/{node}/labels"


def tau_set_topic(prefix: str, node: str) -> str:
    """Where an operator sends a new confidence threshold for one edge node."""
    return f"{prefix}/nodes/{node}/tau/set"


def tau_topic(prefix: str, node: str) -> str:
    """The node's current threshold, retained."""
    return f"{prefix}/nodes/{node}/tau"


def status_topic(prefix: str, role: str, ident: str) -> str:
    return f"{prefix}/status/{role}/{ident}"


def stats_topic(prefix: str, role: str, ident: str) -> str:
    return f"{prefix}/stats/{role}/{ident}"


def hub_load_topic(prefix: str, hub: str) -> str:
    """Where a hub publishes its load (retained, expiring): adaptive-tau edges read every hub's."""
    return f"{prefix}/hubs/{hub}/load"


def hub_load_filter(prefix: str) -> str:
    return f"{prefix}/hubs/+/load"


def parse_hub_load_topic(prefix: str, topic: str) -> str:
    """'<prefix>/hubs/hub1/load' -> 'hub1' (ProtocolError for anything else)."""
    head = f"{prefix}/hubs/"
    parts = topic[len(head) :].split("/") if topic.startswith(head) else []
    if len(parts) != 2 or parts[1] != "load" or not NAME_RE.fullmatch(parts[0]):
        raise ProtocolError(f"not a hub load topic: {topic[:200]}")
    return parts[0]


# ---------------------------------------------------------------- images
def encode_image(image: np.ndarray, jpeg_quality: int = 95) -> tuple[str, bytes]:
    """uint8 (H, W, C) -> (encoding, bytes): raw when small, JPEG when large."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError("images are uint8 (H, W, C)")
    if image.nbytes <= RAW_LIMIT_BYTES:
        return "raw", np.ascontiguousarray(image).tobytes()
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "jpeg", buf.tobytes()


def decode_image(enc: str, data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    h, w, c = shape
    if enc == "raw":
        if len(data) != h * w * c:
            raise ProtocolError(f"raw image has {len(data)} bytes, shape {shape} needs {h * w * c}")
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, c)
    if enc == "jpeg":
        # the header's size is checked before any pixel is decoded: a 16000 x 16000 JPEG of 3 MB
        # would otherwise take seconds and hundreds of MB in the caller's (network) thread
        try:
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
                jw, jh = im.size
        except Image.DecompressionBombError as exc:  # PIL's own limit, hit by the header alone
            raise ProtocolError(f"JPEG header claims an image far beyond {w}x{h}: not decoded") from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ProtocolError(f"not a JPEG: {exc}") from exc
        if (jh, jw) != (h, w):
            raise ProtocolError(f"JPEG header says {jw}x{jh}, payload says {w}x{h}: not decoded")
        flag = cv2.IMREAD_GRAYSCALE if c == 1 else cv2.IMREAD_COLOR
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
        if img is None:
            raise ProtocolError("corrupt JPEG")
        img = img.reshape(img.shape[0], img.shape[1], -1)
        if img.shape != (h, w, c):
            raise ProtocolError(f"JPEG image is {img.shape}, payload says {shape}")
        return img
    raise ProtocolError(f"unknown image encoding {enc!r}")


# ---------------------------------------------------------------- validation
def _unpack(payload: bytes, max_bytes: int) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=max_bytes)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"not msgpack: {exc}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError("payload is not a map")
    if msg.get("v") != VERSION:
        raise ProtocolError(f"protocol version {str(msg.get('v'))[:20]} is not {VERSION}: update the sender", "protocol-version")
    return msg


def _field(msg: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    value = msg.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProtocolError(f"field {name!r} missing or not {kind}")
    return value


def _name(msg: dict, key: str) -> str:
    value = _field(msg, key, str)
    if not NAME_RE.fullmatch(value):
        raise ProtocolError(f"field {key!r} is not a name of 1-64 letters, digits or _.:-")
    return value


def _number(msg: dict, key: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    value = float(_field(msg, key, (int, float)))
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ProtocolError(f"field {key!r} is {value}, not a finite number in [{lo}, {hi}]")
    return value


def _count(msg: dict, key: str) -> int:
    value = _field(msg, key, int)
    if not 0 <= value < 2**63:
        raise ProtocolError(f"field {key!r} out of range")
    return value


# ---------------------------------------------------------------- frames (edge -> hub)
# Per-frame numbers travel as little-endian arrays (one bin field each, read with np.frombuffer):
# decoding and validating a batch is a few numpy calls however many frames it holds.
FID, TC, DL, TOPK, TOPK_P = "<i8", "<f8", "<f4", "<i4", "<f4"


@dataclass
class FrameBatch:
    """Frames of one edge run for one expert, in one message (one frame is a batch of one).

    The reply goes to the node's own replies topic and names the run and the frame ids: nothing
    rides in MQTT v5 properties but the Message Expiry (when the broker may drop it)."""

    node: str
    run: str  # the edge process's run id: a reply names it, so answers to another run are told apart
    pack: str  # pack id: the hub answers only frames of its own pack
    frame_ids: np.ndarray  # int64 (n,)
    t_capture: np.ndarray  # float64 (n,), unix seconds
    topk: np.ndarray  # int (n, k): the edge's top-k classes
    topk_p: np.ndarray  # float (n, k): their probabilities
    images: np.ndarray  # uint8 (n, H, W, C) at the expert's input size
    # milliseconds the edge still waits for each answer, counted at send: relative, so that no clock
    # needs to agree with the edge's; None leaves the MQTT expiry alone
    deadline_ms: np.ndarray | None = None
    pack_version: str | None = None  # the pack version that routed them: the hub answers with that one while it has it
    t_sent: float = field(default_factory=time.time)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def encode(self) -> bytes:
        n, (h, w, c) = len(self), self.images.shape[1:]
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError("images are uint8 (n, H, W, C)")
        if not 0 < n <= MAX_BATCH_FRAMES:
            raise ValueError(f"a frames message holds 1..{MAX_BATCH_FRAMES} frames, not {n}")
        raw = h * w * c <= RAW_LIMIT_BYTES
        msg = {
            "v": VERSION,
            "node": self.node,
            "run": self.run,
            "pack": self.pack,
            "ts": self.t_sent,
            "n": n,
            "k": int(self.topk.shape[1]),
            "fid": _bin(self.frame_ids, FID),
            "tc": _bin(self.t_capture, TC),
            "topk": _bin(self.topk, TOPK),
            "topk_p": _bin(self.topk_p, TOPK_P),
            "enc": "raw" if raw else "jpeg",
            "shape": [h, w, c],
            "img": _bin(self.images, "u1") if raw else [encode_image(im)[1] for im in self.images],
        }
        if self.deadline_ms is not None:
            msg["dl"] = _bin(self.deadline_ms, DL)
        if self.pack_version is not None:
            msg["pv"] = self.pack_version
        return msgpack.packb(msg, use_bin_type=True)


def _bin(values: np.ndarray, dtype: str) -> bytes:
    return np.ascontiguousarray(values, dtype=dtype).tobytes()


def _array(msg: dict, key: str, dtype: str, count: int) -> np.ndarray:
    """A little-endian array field of exactly `count` items (read-only, no copy)."""
    data = _field(msg, key, bytes)
    if len(data) != count * np.dtype(dtype).itemsize:
        raise ProtocolError(f"field {key!r} has {len(data)} bytes, {count} x {dtype} needs {count * np.dtype(dtype).itemsize}")
    return np.frombuffer(data, dtype=dtype)


def _in_range(key: str, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`values` when every one is in [lo, hi] (NaN is not); a few are checked in Python, where
    numpy's per-call cost would be most of a single frame's decoding."""
    ok = all(lo <= v <= hi for v in values.tolist()) if values.size <= 16 else lo <= values.min() and values.max() <= hi
    if not ok:
        raise ProtocolError(f"field {key!r} has values outside [{lo}, {hi}]")
    return values


def decode_frames(
    payload: bytes,
    *,
    max_bytes: int = MAX_FRAME_BYTES,
    shape: tuple[int, int, int] | None = None,
    max_frames: int = MAX_BATCH_FRAMES,
) -> FrameBatch:
    """Validated and bounded before any pixel is decoded: sizes, counts, `shape` when the caller
    knows it (the hub: its experts' input), every array's length and range."""
    msg = _unpack(payload, max_bytes)
    n = _count(msg, "n")
    k = _count(msg, "k")
    if not 0 < n <= max_frames or not 0 < k <= MAX_TOPK:
        raise ProtocolError(f"{n} frames (1..{max_frames}) with top-{k} (1..{MAX_TOPK})")
    got = _field(msg, "shape", list)
    if len(got) != 3 or not all(type(s) is int and 0 < s <= 4096 for s in got) or got[2] not in (1, 3):
        raise ProtocolError(f"bad image shape {got}")
    h, w, c = got
    if shape is not None and tuple(got) != tuple(shape):
        raise ProtocolError(f"images are {tuple(got)}, the experts take {tuple(shape)}", "wrong-shape")
    if n * h * w * c > MAX_BATCH_PIXELS:
        raise ProtocolError(f"{n} images of {h}x{w}x{c} exceed the pixel budget {MAX_BATCH_PIXELS}")
    enc = _field(msg, "enc", str)
    if enc == "raw":
        images = _array(msg, "img", "u1", n * h * w * c).reshape(n, h, w, c)
    else:
        parts = _field(msg, "img", list)
        if len(parts) != n or not all(isinstance(p, bytes) for p in parts):
            raise ProtocolError(f"field 'img' is not {n} encoded images")
        images = np.stack([decode_image(enc, p, (h, w, c)) for p in parts])
    dl = None if msg.get("dl") is None else _in_range("dl", _array(msg, "dl", DL, n), 0.0, MAX_DEADLINE_MS)
    return FrameBatch(
        node=_name(msg, "node"),
        run=_name(msg, "run"),
        pack=_name(msg, "pack"),
        frame_ids=_in_range("fid", _array(msg, "fid", FID, n), 0, 2**62),
        t_capture=_in_range("tc", _array(msg, "tc", TC, n), -1e12, 1e12),
        topk=_in_range("topk", _array(msg, "topk", TOPK, n * k), 0, 2**31 - 1).reshape(n, k),
        topk_p=_in_range("topk_p", _array(msg, "topk_p", TOPK_P, n * k), 0.0, 1.0).reshape(n, k),
        images=images,
        deadline_ms=dl,
        pack_version=None if msg.get("pv") is None else _name(msg, "pv"),
        t_sent=_number(msg, "ts"),
    )


# ---------------------------------------------------------------- replies (hub -> edge)
@dataclass
class ReplyBatch:
    """A hub's answers to the frames of one edge run in one of its batches: one message per edge
    per hub batch, on <prefix>/nodes/<node>/replies/<hub> (the topic names the hub: the broker's
    ACL lets a hub user write only under its own name)."""

    node: str
    run: str
    frame_ids: np.ndarray  # int64 (n,)
    experts: list[str]  # the expert that answered each frame
    labels: np.ndarray  # int (n,)
    conf: np.ndarray  # float (n,): the expert's probability of its label
    queue_ms: np.ndarray  # float (n,): arrival at the hub -> start of its batch
    infer_ms: float  # the batch's inference time
    batch: int  # frames in the hub's batch (all edges)
    pack_version: str | None = None  # the pack version that answered

    def __len__(self) -> int:
        return len(self.frame_ids)

    def encode(self) -> bytes:
        keys = sorted(set(self.experts))
        index = {key: i for i, key in enumerate(keys)}
        msg = {
            "v": VERSION,
            "node": self.node,
            "run": self.run,
            "n": len(self),
            "fid": _bin(self.frame_ids, FID),
            "experts": keys,
            "ei": _bin([index[e] for e in self.experts], "u1"),
            "label": _bin(self.labels, "<u2"),
            "conf": _bin(self.conf, "<f4"),
            "queue_ms": _bin(self.queue_ms, "<f4"),
            "infer_ms": float(self.infer_ms),
            "batch": int(self.batch),
            "pv": self.pack_version,
        }
        return msgpack.packb(msg, use_bin_type=True)


MAX_REPLY_BYTES = 256 * 1024


def decode_replies(payload: bytes, *, max_bytes: int = MAX_REPLY_BYTES) -> ReplyBatch:
    msg = _unpack(payload, max_bytes)
    n = _count(msg, "n")
    if not 0 < n <= MAX_REPLY_FRAMES:
        raise ProtocolError(f"a reply holds {n} answers")
    keys = _field(msg, "experts", list)
    if not 0 < len(keys) <= 256 or not all(isinstance(key, str) for key in keys):
        raise ProtocolError("field 'experts' is not a list of expert keys")
    try:
        for key in keys:
            parse_expert_key(key)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    ei = _in_range("ei", _array(msg, "ei", "u1", n), 0, len(keys) - 1)
    return ReplyBatch(
        node=_name(msg, "node"),
        run=_name(msg, "run"),
        frame_ids=_in_range("fid", _array(msg, "fid", FID, n), 0, 2**62),
        experts=[keys[i] for i in ei],
        labels=_array(msg, "label", "<u2", n),
        conf=_in_range("conf", _array(msg, "conf", "<f4", n), 0.0, 1.0),  # NaN would make the label invalid JSON
        queue_ms=_in_range("queue_ms", _array(msg, "queue_ms", "<f4", n), 0.0, 1e9),
        infer_ms=_number(msg, "infer_ms", 0.0, 1e9),
        batch=_count(msg, "batch"),
        pack_version=None if msg.get("pv") is None else _name(msg, "pv"),
    )


# ---------------------------------------------------------------- final labels (edge -> anyone)
@dataclass
class LabelMsg:
    """One final label per frame, JSON on <prefix>/nodes/<node>/labels."""

    node: str
    frame_id: int
    label: int
    label_name: str
    conf: float
    source: str  # edge | expert | edge-fallback
    expert: str | None  # the subset key the frame was offloaded to, else None
    latency_ms: float  # capture -> this label
    t_capture: float
    edge_label: int  # the edge's own top-1, kept for evaluation
    edge_conf: float
    pack: str
    run: str = ""  # the edge process's run id: frame ids restart at 0 when an edge restarts
    tau: float | None = None  # the threshold this frame was gated with (adaptive tau moves it)
    # for source `expert`: the hub that answered, as it names itself in its reply (its broker user
    # where it has one, else its hub id); None on other labels and from edges before this field
    hub: str | None = None
    pack_version: str | None = None  # the pack version that made this label (the hub's for expert labels)
    # where latency_ms went (ms; None where it does not apply): waiting at the edge (capture to the
    # start of its batch), the edge's batch inference, and for expert labels the hub's queue, the
    # hub's inference, and the rest of the round trip (network, broker, encoding: rtt - hub's share)
    wait_ms: float | None = None
    infer_ms: float | None = None
    hub_queue_ms: float | None = None
    hub_infer_ms: float | None = None
    network_ms: float | None = None

    def encode(self) -> bytes:  # vars, not asdict: one label per frame, and asdict's deep copy is 5x slower
        return json.dumps(vars(self), separators=(",", ":")).encode()


MAX_LABEL_BYTES = 64 * 1024


def _text(msg: dict, key: str, default: str | None = None, max_len: int = 256) -> str:
    value = msg.get(key, default)
    if not isinstance(value, str) or len(value) > max_len:
        raise ProtocolError(f"field {key!r} missing or not a string of at most {max_len} characters")
    return value


def decode_label(payload: bytes) -> LabelMsg:
    """A label as a consumer must read it: every field checked (types, ranges), fields it does not
    know ignored, so that labels from newer edges still read."""
    if len(payload) > MAX_LABEL_BYTES:
        raise ProtocolError(f"label of {len(payload)} bytes exceeds {MAX_LABEL_BYTES}")
    try:
        msg = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"bad label payload: {exc}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError("label is not a JSON object")
    source = _text(msg, "source")
    if source not in LABEL_SOURCES:
        raise ProtocolError(f"label source {source[:20]!r} is not one of {LABEL_SOURCES}")
    return LabelMsg(
        node=_name(msg, "node"),
        frame_id=_count(msg, "frame_id"),
        label=_count(msg, "label"),
        label_name=_text(msg, "label_name"),
        conf=_number(msg, "conf", 0.0, 1.0),
        source=source,
        expert=None if msg.get("expert") is None else _name(msg, "expert"),
        latency_ms=_number(msg, "latency_ms"),
        t_capture=_number(msg, "t_capture"),
        edge_label=_count(msg, "edge_label"),
        edge_conf=_number(msg, "edge_conf", 0.0, 1.0),
        pack=_text(msg, "pack"),
        run=_text(msg, "run", ""),
        tau=None if msg.get("tau") is None else _number(msg, "tau", 0.0, 1.0),
        hub=None if msg.get("hub") is None else _name(msg, "hub"),
        pack_version=None if msg.get("pack_version") is None else _name(msg, "pack_version"),
        **{k: None if msg.get(k) is None else _number(msg, k, 0.0) for k in LATENCY_PARTS},
    )


# ---------------------------------------------------------------- hub load (hub -> edges)
MAX_LOAD_BYTES = 1024
MAX_RATE = 1e7  # frames/s: far beyond any hub, still a bound on what a message may claim
MAX_LOAD_INTERVAL_S = 10.0
LOAD_STALE_INTERVALS = 3  # a load this many periods old is stale: the broker expires it, edges ignore it


@dataclass
class HubLoad:
    """What a hub can answer and what it is asked, JSON on <prefix>/hubs/<hub>/load.

    capacity: frames/s it answers while busy (answered frames over inference time, smoothed; None
    until it has answered a batch); arrivals: frames/s received over the last interval; queue:
    frames waiting; busy: fraction of the interval spent answering."""

    hub: str
    pack: str
    capacity: float | None
    arrivals: float
    queue: int
    busy: float
    interval_s: float  # the publication period: a load older than a few periods is stale
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"v": VERSION, **asdict(self)}


def decode_hub_load(payload: bytes) -> HubLoad:
    """Bounded and validated: anything else raises ProtocolError (counted by the edge, ignored)."""
    if len(payload) > MAX_LOAD_BYTES:
        raise ProtocolError(f"load payload of {len(payload)} bytes exceeds {MAX_LOAD_BYTES}")
    try:
        msg = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"load is not JSON: {exc}") from exc
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        raise ProtocolError(f"load is not a version {VERSION} JSON object")
    queue = _count(msg, "queue")
    if queue >= 2**31:
        raise ProtocolError("field 'queue' out of range")
    return HubLoad(
        hub=_name(msg, "hub"),
        pack=_name(msg, "pack"),
        capacity=None if msg.get("capacity") is None else _number(msg, "capacity", 0.0, MAX_RATE),
        arrivals=_number(msg, "arrivals", 0.0, MAX_RATE),
        queue=queue,
        busy=_number(msg, "busy", 0.0, 1.0),
        interval_s=_number(msg, "interval_s", 1e-3, MAX_LOAD_INTERVAL_S),
        ts=_number(msg, "ts"),
    )
