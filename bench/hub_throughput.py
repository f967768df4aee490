"""Expert hub throughput next to its raw expert loop: how much of the experts' speed the hub keeps.

- raw: the hub's expert library in this process (same backend, precision and threads), batches of
  --batch, each frame to the expert the generalist routes it to (as the hub receives them);
- hub: `expert-hub run` behind a private Mosquitto; this process publishes --frames frames to
  their experts' topics (QoS 1, as an edge does) keeping --window of them unanswered (enough to
  fill the hub's batches; the broker's queue per subscriber is bounded) and counts the replies.
Prints one JSON line: both rates, hub_vs_raw, and the hub's mean batch size.

    python bench/hub_throughput.py --frames 3000
    python bench/hub_throughput.py --backend torch --threads 2
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

from askexpert.backends import open_backend
from askexpert.datasets import load_dataset
from askexpert.localbroker import Broker, hub_args, spawn_quiet
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import FrameMsg, ReplyMsg, decode_reply, replies_topic
from askexpert.routing import decide
from askexpert.settings import CommonSettings
from askexpert.subscriber import wait_online


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64, help="the raw loop's batch and the hub's --max-batch")
    ap.add_argument("--backend", default="onnx", help="torch | onnx")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="inference threads, raw and hub alike (0: auto, half the cores)")
    ap.add_argument("--window", type=int, default=256, help="frames published and not yet answered, at most")
    a = ap.parse_args()
    pack = Pack.load(a.pack)
    images = load_dataset("fashion-mnist", "test").images[: a.frames]
    backend = open_backend(a.backend, threads=a.threads, precision=a.precision)
    logits = backend.classifier(pack, pack.manifest.generalist)(images)
    top = decide(logits, pack.manifest.partition, pack.manifest.k)
    keys = [str(k) for k in top.expert]
    library = backend.experts(pack, pack.manifest.experts)
    library(images[: a.batch], keys[: a.batch])  # warm up
    t0 = time.perf_counter()
    for i in range(0, len(images), a.batch):
        library(images[i : i + a.batch], keys[i : i + a.batch])
    raw = len(images) / (time.perf_counter() - t0)

    broker = Broker().start()
    opts = ["--backend", a.backend, "--precision", a.precision, "--threads", str(a.threads), "--max-batch", str(a.batch)]
    hub = spawn_quiet("expert_hub.cli", *hub_args(a.pack, broker.url, "tput-hub", *opts, "--queue-size", str(a.frames)))
    client = MqttClient(CommonSettings(broker=broker.url), "edge", "tput")
    replies: list[ReplyMsg] = []
    answered = threading.Condition()

    def on_reply(message) -> None:
        with answered:
            replies.append(decode_reply(message.payload))
            answered.notify_all()

    client.subscribe(replies_topic("ate/v1", "tput"), on_reply)
    try:
        wait_online(CommonSettings(broker=broker.url), "hub", "tput-hub")
        client.start()
        client.wait_connected(10)
        time.sleep(0.2)
        t0 = time.perf_counter()
        for i, image in enumerate(images):
            with answered:
                if not answered.wait_for(lambda i=i: i - len(replies) < a.window, 60):
                    raise TimeoutError(f"no reply for 60 s after {len(replies)} of {len(images)}")
            frame = FrameMsg("tput", i, time.time(), pack.pack_id, [int(c) for c in top.topk[i]], [0.4, 0.3], image)
            client.publish_frame("ate/v1", keys[i], frame, "bench", expiry_s=600)
        with answered:
            if not answered.wait_for(lambda: len(replies) >= len(images), 60):
                raise TimeoutError(f"{len(replies)} of {len(images)} replies")
        hub_fps = len(images) / (time.perf_counter() - t0)
    finally:
        client.stop()
        hub.terminate()
        hub.wait(10)
        broker.stop()
    print(
        json.dumps(
            {
                "bench": "hub_throughput",
                "frames": len(images),
                "backend": a.backend,
                "precision": a.precision,
                "threads": a.threads,
                "batch": a.batch,
                "raw_experts_fps": round(raw, 1),
                "hub_fps": round(hub_fps, 1),
                "hub_vs_raw": round(hub_fps / raw, 3),
                "hub_mean_batch": round(float(np.mean([r.batch for r in replies])), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
