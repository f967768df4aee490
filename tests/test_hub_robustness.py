"""A hub keeps serving through malformed, oversized, foreign-pack, wrong-shape, bomb and misdirected frames."""

from __future__ import annotations

import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from askexpert.backends import open_backend
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import FrameMsg, decode_reply, frames_topic
from expert_hub.hub import ExpertHub
from expert_hub.settings import HubSettings


def _publisher(broker):
    replies: list = []
    got = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(client, userdata, msg):
        replies.append((decode_reply(msg.payload), msg.properties.CorrelationData))
        got.set()

    c.on_message = on_message
    c.connect("127.0.0.1", broker.port)
    c.subscribe(REPLIES, qos=1)
    c.subscribe("ate/v1/nodes/victim/replies", qos=1)
    c.loop_start()
    return c, replies, got


REPLIES = "ate/v1/nodes/n/replies"


def _send(c, topic, payload, corr=b"x", response=REPLIES):
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response
    props.CorrelationData = corr
    c.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)


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
        _send(pub, topic, b"\x81\xa1v\x01")  # msgpack map, fields missing
        _send(pub, topic, b"x" * (65 * 1024))  # oversized
        _send(pub, topic, FrameMsg("n", 1, time.time(), "someone-elses-pack", [0, 2], [0.4, 0.3], image).encode())
        _send(pub, topic, FrameMsg("n", 2, time.time(), pack.pack_id, [0, 2], [0.4, 0.3], np.zeros((32, 32, 1), np.uint8)).encode())
        _send(pub, frames_topic("ate/v1", "9-9", "n"), FrameMsg("n", 3, time.time(), pack.pack_id, [0], [0.4], image).encode())
        # a JPEG whose header claims 16000 x 16000 pixels: refused before decoding
        _send(pub, topic, jpeg_bomb_frame(pack.pack_id))
        # node "n" asking for the answer to go into another node's replies
        _send(
            pub,
            topic,
            FrameMsg("n", 5, time.time(), pack.pack_id, [0, 2], [0.4, 0.3], image).encode(),
            response="ate/v1/nodes/victim/replies",
        )
        # a frame that names another node than the topic it came on (the one the ACL vouches for)
        _send(
            pub,
            topic,
            FrameMsg("victim", 6, time.time(), pack.pack_id, [0, 2], [0.4, 0.3], image).encode(),
            response="ate/v1/nodes/victim/replies",
        )
        _send(pub, topic, FrameMsg("n", 4, time.time(), pack.pack_id, [0, 2], [0.4, 0.3], image).encode(), corr=b"good")
        assert got.wait(10), "a valid frame after the bad ones is answered"
        time.sleep(0.3)
    finally:
        pub.loop_stop()
        hub.stop()
        client.stop()
    assert len(replies) == 1
    reply, corr = replies[0]
    assert (reply.frame_id, reply.expert, corr) == (4, "0-2", b"good")
    assert 0 <= reply.label < 10
    # garbage, missing fields, oversized, foreign pack, wrong shape, bomb, foreign response topic,
    # node mismatch (the unknown expert's topic is not subscribed: the broker never delivers it)
    assert hub.stats.rejected == 8
    assert hub.stats.answered == 1


def jpeg_bomb_frame(pack_id: str) -> bytes:
    """A frame whose JPEG header says 16000 x 16000 (the SOF dimensions patched), shape 28x28x1."""
    import cv2
    import msgpack

    ok, buf = cv2.imencode(".jpg", np.full((32, 32), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = (16000).to_bytes(2, "big") * 2
    return msgpack.packb(
        {
            "v": 1,
            "node": "n",
            "fid": 9,
            "tc": time.time(),
            "ts": time.time(),
            "pack": pack_id,
            "topk": [0, 2],
            "topk_p": [0.4, 0.3],
            "enc": "jpeg",
            "shape": [28, 28, 1],
            "img": bytes(data),
        },
        use_bin_type=True,
    )
