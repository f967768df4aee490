"""A hub keeps serving through malformed, oversized, foreign-pack, wrong-shape, bomb, old-protocol and misattributed frames."""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
from helpers import frames
from paho.mqtt.enums import CallbackAPIVersion

from askexpert.backends import open_backend
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import decode_replies, frames_topic, parse_replies_topic
from expert_hub.hub import ExpertHub
from expert_hub.settings import HubSettings


def _publisher(broker):
    """A raw paho client that sends frames as node `n` and collects (reply, hub) for `n` and `victim`."""
    replies: list = []
    got = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(client, userdata, msg):
        replies.append((decode_replies(msg.payload), parse_replies_topic("ate/v1", msg.topic)[1]))
        got.set()

    c.on_message = on_message
    c.connect("127.0.0.1", broker.port)
    c.subscribe("ate/v1/nodes/n/replies/+", qos=1)
    c.subscribe("ate/v1/nodes/victim/replies/+", qos=1)
    c.loop_start()
    return c, replies, got


def _send(c, topic, payload):
    c.publish(topic, payload, qos=1).wait_for_publish(5)


def test_bad_frames_are_counted_and_the_hub_keeps_serving(tiny_pack, broker):
    pack = Pack.load(tiny_pack)
    settings = HubSettings(broker=broker.url, pack=tiny_pack, hub_id="hr", max_payload=64 * 1024, stats_interval_s=0)
    lib = open_backend("torch").experts(pack, pack.manifest.experts)
    client = MqttClient(settings, "hub", "hr")
    hub = ExpertHub(settings, pack, lib, client)
    hub.start()
    client.start()
    assert client.wait_connected(10)
    time.sleep(0.3)
    pub, replies, got = _publisher(broker)
    topic = frames_topic("ate/v1", "0-2", "n")
    image = np.zeros((28, 28, 1), np.uint8)
    try:
        _send(pub, topic, b"\x00garbage\xff")  # not msgpack
        _send(pub, topic, b"\x82\xa1v\x02\xa1n\x01")  # msgpack map, fields missing
        _send(pub, topic, b"x" * (65 * 1024))  # oversized
        _send(pub, topic, frames("n", [1], "someone-elses-pack", image).encode())
        _send(pub, topic, frames("n", [2], pack.pack_id, np.zeros((32, 32, 1), np.uint8)).encode())
        _send(pub, frames_topic("ate/v1", "9-9", "n"), frames("n", [3], pack.pack_id, image).encode())
        # a JPEG whose header claims 16000 x 16000 pixels: refused before decoding
        _send(pub, topic, jpeg_bomb_frame(pack.pack_id))
        # an edge that speaks protocol v1
        _send(pub, topic, msgpack.packb({**msgpack.unpackb(frames("n", [5], pack.pack_id, image).encode()), "v": 1}))
        # frames that name another node than the topic they came on (the one the ACL vouches for)
        _send(pub, topic, frames("victim", [6], pack.pack_id, image).encode())
        _send(pub, topic, frames("n", [4, 8], pack.pack_id, image, run="good").encode())
        assert got.wait(10), "valid frames after the bad ones are answered"
        time.sleep(0.3)
    finally:
        pub.loop_stop()
        hub.stop()
        client.stop()
    assert len(replies) == 1
    reply, answered_by = replies[0]
    assert (reply.frame_ids.tolist(), reply.experts, reply.run, answered_by) == ([4, 8], ["0-2", "0-2"], "good", "hr")
    assert all(0 <= label < 10 for label in reply.labels)
    # garbage, missing fields, oversized, foreign pack, wrong shape, bomb, protocol v1, node mismatch
    # (the unknown expert's topic is not subscribed: the broker never delivers it)
    assert hub.stats.rejected == 8
    assert hub.stats.answered == 2
    assert hub.stats.received == 9


def jpeg_bomb_frame(pack_id: str) -> bytes:
    """A frame whose JPEG header says 16000 x 16000 (the SOF dimensions patched), shape 28x28x1."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.full((32, 32), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = (16000).to_bytes(2, "big") * 2
    base = msgpack.unpackb(frames("n", [9], pack_id, np.zeros((28, 28, 1), np.uint8)).encode())
    return msgpack.packb({**base, "enc": "jpeg", "img": [bytes(data)]}, use_bin_type=True)
