"""Wire protocol v2, routing and settings: small, exact checks."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from helpers import frames

from askexpert.protocol import (
    MAX_BATCH_FRAMES,
    LabelMsg,
    ProtocolError,
    ReplyBatch,
    decode_frames,
    decode_label,
    decode_replies,
    frames_filter,
    frames_topic,
    parse_frames_topic,
    parse_replies_topic,
    replies_topic,
)
from askexpert.routing import expert_key, parse_expert_key, required_experts, route, topk
from edge_node.settings import EdgeSettings
from expert_hub.settings import HubSettings


def test_topics_and_share_groups():
    assert frames_topic("ate/v1", "0-2", "cam1") == "ate/v1/experts/0-2/frames/cam1"
    assert frames_filter("ate/v1", "1", "hubs") == "$share/hubs/ate/v1/experts/1/frames/+"
    assert parse_frames_topic("ate/v1", "ate/v1/experts/0-3/frames/cam1") == ("0-3", "cam1")
    for bad in (
        "ate/v1/experts/3-0/frames/c",
        "ate/v1/experts/x/frames/c",
        "ate/v1/nodes/a/labels",
        "ate/v1/experts/0/frames",
        "ate/v1/experts/0/frames/a/b",
    ):
        with pytest.raises(ProtocolError):
            parse_frames_topic("ate/v1", bad)
    assert replies_topic("ate/v1", "cam1", "hub1") == "ate/v1/nodes/cam1/replies/hub1"
    assert parse_replies_topic("ate/v1", "ate/v1/nodes/cam1/replies/hub1") == ("cam1", "hub1")
    for bad in ("ate/v1/nodes/cam1/replies", "ate/v1/nodes/cam1/labels/hub1", "ate/v1/nodes/cam1/replies/a/b"):
        with pytest.raises(ProtocolError):
            parse_replies_topic("ate/v1", bad)


def test_routing_is_algorithm_1():
    partition = [0, 1, 0, 1, 0, 2, 0, 2, 3, 2]
    assert route([6, 2], partition) == "0"  # both tops
    assert route([9, 4], partition) == "0-2"  # sorted subset indices
    assert route([8, 1], partition) == "1-3"
    assert expert_key([2, 0, 2]) == "0-2" and parse_expert_key("0-2") == (0, 2)
    assert len(required_experts(4, 2)) == 4 + 6 and len(required_experts(6, 3)) == 6 + 15 + 20
    probs = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])
    assert topk(probs, 2).tolist() == [[1, 2], [2, 0]]  # ties: lower index first


@pytest.mark.parametrize("shape", [(28, 28, 1), (96, 96, 3)])
@pytest.mark.parametrize("n", [1, 5])
def test_frames_round_trip_raw_and_jpeg(shape, n):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape, dtype=np.uint8) if shape[2] == 1 else np.full(shape, 128, np.uint8)
    msg = frames("cam1", list(range(7, 7 + n)), "pack", image, run="r9", deadline_ms=250.5, version="v1", topk=(3, 1))
    payload = msg.encode()
    back = decode_frames(payload, shape=shape)
    assert (back.node, back.run, back.pack, back.pack_version) == ("cam1", "r9", "pack", "v1")
    assert back.frame_ids.tolist() == list(range(7, 7 + n)) and back.topk.tolist() == [[3, 1]] * n
    assert back.deadline_ms.tolist() == [250.5] * n and np.allclose(back.t_capture, msg.t_capture)
    if shape[2] == 1:  # small frames travel raw, in one buffer: bit-exact
        assert np.array_equal(back.images, msg.images) and len(payload) < n * image.nbytes + 300
    else:  # large frames travel as JPEG: smaller, close
        assert len(payload) < n * image.nbytes / 4 and np.abs(back.images.astype(int) - msg.images).max() <= 2


def test_malformed_oversized_and_unbounded_frames_raise():
    good = frames("n", [1, 2], "p", np.zeros((4, 4, 1), np.uint8)).encode()
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_frames(good, max_bytes=10)
    for bad in (b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"v": 2}), good[:-3]):
        with pytest.raises(ProtocolError):
            decode_frames(bad)
    with pytest.raises(ProtocolError) as v1:
        decode_frames(msgpack.packb({"v": 1, "node": "n"}))
    assert v1.value.reason == "protocol-version"
    with pytest.raises(ProtocolError) as shape:  # not what the experts take: refused before any pixel
        decode_frames(good, shape=(28, 28, 1))
    assert shape.value.reason == "wrong-shape"
    base = msgpack.unpackb(good)
    for key, value in [
        ("shape", [4, 4, 3]),  # says more bytes than it carries
        ("n", 3),  # more frames than its arrays hold
        ("n", MAX_BATCH_FRAMES + 1),
        ("k", 0),
        ("fid", np.array([1, -5], "<i8").tobytes()),
        ("topk_p", np.array([0.4, 0.3, np.nan, 0.1], "<f4").tobytes()),
        ("img", [b"x", b"y"]),  # a list where the encoding says raw
    ]:
        with pytest.raises(ProtocolError):
            decode_frames(msgpack.packb({**base, key: value}))
    with pytest.raises(ValueError):  # the sender refuses to build what no receiver takes
        frames("n", list(range(MAX_BATCH_FRAMES + 1)), "p", np.zeros((4, 4, 1), np.uint8)).encode()


def test_replies_and_label_round_trip():
    r = ReplyBatch("cam1", "r1", np.array([5, 9]), ["0-2", "1"], np.array([3, 4]), np.array([0.9, 0.5]), np.array([0.1, 0.2]), 2.0, 8, "v1")
    back = decode_replies(r.encode())
    assert (back.node, back.run, back.experts, back.batch, back.infer_ms, back.pack_version) == ("cam1", "r1", ["0-2", "1"], 8, 2.0, "v1")
    assert back.frame_ids.tolist() == [5, 9] and back.labels.tolist() == [3, 4]
    assert np.allclose(back.conf, [0.9, 0.5]) and np.allclose(back.queue_ms, [0.1, 0.2])
    lab = LabelMsg("cam1", 5, 3, "Dress", 0.9, "expert", "0-2", 12.5, 1.0, 1, 0.4, "p", hub="hub1")
    assert decode_label(lab.encode()) == lab
    with pytest.raises(ProtocolError):
        decode_label(b'{"frame_id": 1}')


def test_labels_are_checked_field_by_field_and_unknown_fields_ignored():
    """A consumer reads labels from the network: wrong types and ranges are refused (a list as a
    frame id would break every set of ids downstream), fields from newer edges are ignored."""
    import json

    good = json.loads(LabelMsg("cam1", 5, 3, "Dress", 0.9, "expert", "0-2", 12.5, 1.0, 1, 0.4, "p", "r1", 0.8).encode())
    assert decode_label(json.dumps({**good, "added_later": {"x": 1}}).encode()).tau == 0.8
    for field, bad in [
        ("frame_id", [1]),
        ("frame_id", -1),
        ("frame_id", True),
        ("conf", 1.5),
        ("conf", "0.9"),
        ("source", "hub"),
        ("node", "a/b"),
        ("expert", 3),
        ("latency_ms", None),
        ("tau", 2.0),
        ("label_name", "x" * 300),
        ("run", 7),
        ("hub", "hub/1"),
        ("hub", 1),
    ]:
        with pytest.raises(ProtocolError):
            decode_label(json.dumps({**good, field: bad}).encode())
    assert decode_label(json.dumps({k: v for k, v in good.items() if k != "hub"}).encode()).hub is None  # older edges
    for payload in (b"[]", b"NaN", b"{" * 10, b" " * (64 * 1024 + 1)):
        with pytest.raises(ProtocolError):
            decode_label(payload)


def test_a_hub_answers_as_its_broker_user_where_it_has_one():
    """Replies, and so expert labels, name the hub by the identity the shipped broker checks."""
    assert HubSettings(hub_id="box7", username="hub1").answers_as == "hub1"
    assert HubSettings(hub_id="box7").answers_as == "box7"
    assert HubSettings(hub_id="box7", username="hub one@site").answers_as == "box7"  # not a topic-safe name


def test_settings_precedence_flag_env_file(tmp_path, monkeypatch):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("tau: 0.6\ndeadline_ms: 250\nnode_id: from-file\n")
    monkeypatch.setenv("ATE_CONFIG", str(cfg))
    monkeypatch.setenv("ATE_DEADLINE_MS", "400")
    s = EdgeSettings(node_id="from-flag")
    assert (s.tau, s.deadline_ms, s.node_id) == (0.6, 400.0, "from-flag")
    with pytest.raises(ValueError):
        EdgeSettings(tau=1.5)
    cfg.write_text("tau: 0.6\nmax_batch: 8\n")  # a key of the edge's is a typo for the hub
    with pytest.raises(ValueError, match="tau"):
        HubSettings()
    monkeypatch.delenv("ATE_CONFIG")
    monkeypatch.setenv("ATE_EXPERTS", "0,0-2")
    assert HubSettings().experts == ["0", "0-2"]
    with pytest.raises(ValueError):
        HubSettings(broker="localhost:1883")


def _valid_frame(shape=(28, 28, 1)) -> bytes:
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    return frames("cam1", [7, 8], "0c7d1a2b3c4d5e6f", img, deadline_ms=500.0).encode()


def _mutate(obj, rng):
    """One random change to a decoded frame map: wrong types, huge or negative numbers, NaN, junk."""
    junk = [None, -1, 2**64 - 1, -(2**63), float("nan"), float("inf"), "x" * 100, b"\x00" * 7, [], {}, [1, "a"], True, 3.5, "../#"]
    key = rng.choice(sorted(obj))
    out = dict(obj)
    if rng.random() < 0.15:
        del out[key]
    elif isinstance(out[key], list) and out[key] and rng.random() < 0.5:
        lst = list(out[key])
        lst[int(rng.integers(len(lst)))] = junk[int(rng.integers(len(junk)))]
        out[key] = lst
    else:
        out[key] = junk[int(rng.integers(len(junk)))]
    return out


@pytest.mark.parametrize("shape", [(28, 28, 1), (96, 96, 3)])
def test_fuzzed_frames_decode_or_raise_protocol_error_only(shape):
    """Whatever a hostile sender changes, decoding gives a valid frame or a ProtocolError (counted by
    the hub as rejected), never another exception: 3000 mutations per image kind."""
    rng = np.random.default_rng(1)
    base = msgpack.unpackb(_valid_frame(shape), raw=False)
    outcomes = {"ok": 0, "rejected": 0}
    for _ in range(3000):
        msg = _mutate(base, rng)
        if rng.random() < 0.3:
            msg = _mutate(msg, rng)
        payload = msgpack.packb(msg, use_bin_type=True)
        if rng.random() < 0.2:  # byte-level damage too
            b = bytearray(payload)
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
            payload = bytes(b)
        try:
            f = decode_frames(payload)
        except ProtocolError:
            outcomes["rejected"] += 1
            continue
        assert f.images.shape[1:] == shape and f.images.dtype == np.uint8 and len(f.images) == len(f.frame_ids) == len(f)
        outcomes["ok"] += 1
    assert outcomes["rejected"] > 2000 and outcomes["ok"] > 0


def test_jpeg_header_is_checked_before_decoding():
    """A frame whose JPEG is much larger than its declared shape is refused from the header alone."""
    import cv2

    big = np.zeros((2000, 2000, 1), np.uint8)  # 2000 x 2000 declared as 96 x 96
    ok, buf = cv2.imencode(".jpg", big)
    base = msgpack.unpackb(frames("cam1", [1], "0c7d1a2b3c4d5e6f", np.zeros((96, 96, 3), np.uint8)).encode())
    assert base["enc"] == "jpeg"
    with pytest.raises(ProtocolError, match="header says 2000x2000"):
        decode_frames(msgpack.packb({**base, "img": [buf.tobytes()]}))


def test_replies_with_non_finite_or_out_of_range_values_are_refused():
    r = ReplyBatch("cam1", "r1", np.array([3]), ["0-2"], np.array([2]), np.array([0.9]), np.array([0.1]), 1.0, 4)
    good = msgpack.unpackb(r.encode())
    assert decode_replies(msgpack.packb(good)).conf.tolist() == pytest.approx([0.9])
    for key, bad in [
        ("conf", np.array([np.nan], "<f4").tobytes()),
        ("conf", np.array([np.inf], "<f4").tobytes()),
        ("conf", np.array([1.5], "<f4").tobytes()),
        ("conf", b"\x00" * 8),  # two values for one frame
        ("fid", np.array([-1], "<i8").tobytes()),
        ("ei", b"\x01"),  # an expert index past the list
        ("experts", ["9-1"]),
        ("node", "x" * 65),
        ("run", "a/b"),
        ("infer_ms", -1.0),
        ("n", 0),
    ]:
        with pytest.raises(ProtocolError):
            decode_replies(msgpack.packb({**good, key: bad}))


def test_ids_that_go_into_topics_are_validated():
    with pytest.raises(ValueError):
        EdgeSettings(node_id="cam/+")
    with pytest.raises(ValueError):
        HubSettings(hub_id="#")
    assert EdgeSettings(node_id="cam-1.local").node_id == "cam-1.local"


@pytest.mark.parametrize(
    "module, flag, value, says",
    [
        ("edge_node.cli", "--tau", "1.5", "--tau: Input should be less than or equal to 1 (got '1.5')"),
        ("edge_node.cli", "--broker", "mqtt://x:notaport", "--broker: must look like mqtt://host:port"),
        ("expert_hub.cli", "--max-batch", "0", "--max-batch: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_flag_is_one_clear_line_said_once(module, flag, value, says):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-X", "importtime", "-m", module, "run", flag, value], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert says in out.stderr and out.stderr.count(flag + ":") == 1
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "edge_node.settings" in imported or "expert_hub.settings" in imported
    assert "torch" not in imported and "timm" not in imported  # reported before the models' imports
