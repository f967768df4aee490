"""Offload round trip through a real Mosquitto: frame published -> expert reply received.

One request in flight at a time (the latency a single uncertain frame sees), QoS 1 both ways,
MQTT v5 Response Topic + Correlation Data, exactly as the edge does it. Prints one JSON line
with p50/p90/p99/max in milliseconds.

    python bench/offload_rtt.py --pack packs/fashion-mnist --requests 500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time

import numpy as np

from askexpert.datasets import load_dataset
from askexpert.localbroker import Broker, spawn
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import FrameMsg, correlation_id, decode_reply, frames_topic, replies_topic
from askexpert.settings import CommonSettings
from askexpert.subscriber import wait_online


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--expert", default="0-2")
    ap.add_argument("--backend", default="torch")
    a = ap.parse_args()
    pack = Pack.load(a.pack)
    images = load_dataset("fashion-mnist", "test").images
    broker = Broker().start()
    hub = spawn(
        "expert_hub.cli",
        "run",
        "--pack",
        a.pack,
        "--broker",
        broker.url,
        "--hub-id",
        "rtt-hub",
        "--backend",
        a.backend,
        "--stats-interval-s",
        "0",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = MqttClient(CommonSettings(broker=broker.url), "edge", "rtt")
    got = threading.Event()
    client.subscribe(replies_topic("ate/v1", "rtt"), lambda m: (decode_reply(m.payload), got.set()))
    rtts: list[float] = []
    try:
        wait_online(CommonSettings(broker=broker.url), "hub", "rtt-hub")
        client.start()
        client.wait_connected(10)
        time.sleep(0.2)
        for i in range(a.requests + 20):  # the first 20 warm up
            frame = FrameMsg("rtt", i, time.time(), pack.pack_id, [0, 5], [0.4, 0.3], images[i % len(images)])
            got.clear()
            t0 = time.perf_counter()
            client.publish(
                frames_topic("ate/v1", a.expert, "rtt"),
                frame.encode(),
                qos=1,
                response_topic=replies_topic("ate/v1", "rtt"),
                correlation=correlation_id("rtt", "bench", i),
                expiry_s=5,
            )
            if not got.wait(5):
                raise TimeoutError("no reply within 5 s")
            if i >= 20:
                rtts.append((time.perf_counter() - t0) * 1000)
    finally:
        client.stop()
        hub.terminate()
        hub.wait(10)
        broker.stop()
    r = np.asarray(rtts)
    print(
        json.dumps(
            {
                "bench": "offload_rtt",
                "requests": len(r),
                "expert": a.expert,
                "backend": a.backend,
                **{f"p{q}_ms": round(float(np.percentile(r, q)), 3) for q in (50, 90, 99)},
                "max_ms": round(float(r.max()), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
