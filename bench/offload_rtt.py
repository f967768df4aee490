"""Offload round trip through a real Mosquitto: frame published -> expert reply received.

One request in flight at a time (the latency a single uncertain frame sees): a frames message of
one frame and its reply, QoS 0 both ways, exactly as the edge does it (protocol v2). Prints one JSON line
with p50/p90/p99/max in milliseconds of the round trip, of the hub's own inference (as its reply
says), and of the round trip beyond that inference (network, broker, queueing, encoding).

    python bench/offload_rtt.py --pack packs/fashion-mnist --requests 500
    python bench/offload_rtt.py --backend onnx --precision int8 --threads 1
    python bench/offload_rtt.py --bridged   # edge on a local Mosquitto bridged (docker/mosquitto/bridge.conf) to the hub's
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

from askexpert.datasets import load_dataset
from askexpert.localbroker import Broker, hub_args, spawn_quiet, start_bridged
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import FrameBatch, ReplyBatch, decode_replies, replies_filter
from askexpert.settings import CommonSettings
from askexpert.subscriber import wait_online


def measure(client: MqttClient, expert: str, pack_id: str, images: np.ndarray, requests: int) -> tuple[list[float], list[float]]:
    """One offload at a time: round trips and the hub's inference times, ms (20 warm-up first)."""
    got = threading.Event()
    replies: list[ReplyBatch] = []
    client.subscribe(replies_filter("ate/v1", "rtt"), lambda m: (replies.append(decode_replies(m.payload)), got.set()))
    client.start()
    client.wait_subscribed(10)
    rtts: list[float] = []
    infer: list[float] = []
    for i in range(requests + 20):
        image = images[i % len(images)][None]
        frame = FrameBatch(
            "rtt", "bench", pack_id, np.array([i]), np.array([time.time()]), np.array([[0, 5]]), np.array([[0.4, 0.3]]), image
        )
        got.clear()
        t0 = time.perf_counter()
        client.publish_frames("ate/v1", expert, frame)
        if not got.wait(5):
            raise TimeoutError("no reply within 5 s")
        if i >= 20:
            rtts.append((time.perf_counter() - t0) * 1000)
            infer.append(replies[-1].infer_ms)
    return rtts, infer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--expert", default="0-2")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="the hub's inference threads (0: the library's default)")
    ap.add_argument("--bridged", action="store_true", help="the hub on a site broker, the sender on a local one bridged to it")
    a = ap.parse_args()
    pack = Pack.load(a.pack)
    images = load_dataset("fashion-mnist", "test").images
    broker, local = start_bridged() if a.bridged else (Broker().start(), None)
    opts = ["--backend", a.backend, "--precision", a.precision, "--threads", str(a.threads)]
    hub = spawn_quiet("expert_hub.cli", *hub_args(a.pack, broker.url, "rtt-hub", *opts))
    client = MqttClient(CommonSettings(broker=(local or broker).url), "edge", "rtt")
    try:
        wait_online(CommonSettings(broker=broker.url), "hub", "rtt-hub")
        rtts, infer = measure(client, a.expert, pack.pack_id, images, a.requests)
    finally:
        client.stop()
        hub.terminate()
        hub.wait(10)
        broker.stop()
        if local is not None:
            local.stop()
    r, h = np.asarray(rtts), np.asarray(infer)

    def spread(x: np.ndarray) -> dict:
        return {**{f"p{q}": round(float(np.percentile(x, q)), 3) for q in (50, 90, 99)}, "max": round(float(x.max()), 3)}

    print(
        json.dumps(
            {
                "bench": "offload_rtt",
                "topology": "bridged" if a.bridged else "one broker",
                "requests": len(r),
                "expert": a.expert,
                "backend": a.backend,
                "precision": a.precision,
                "threads": a.threads,
                "rtt_ms": spread(r),
                "hub_infer_ms": spread(h),
                "beyond_inference_ms": spread(r - h),
            }
        )
    )


if __name__ == "__main__":
    main()
