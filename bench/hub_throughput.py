"""Expert hub throughput next to its raw expert loop: how much of the experts' speed the hub keeps.

- raw: the hub's expert library in this process with the hub's own backend, precision, inference
  threads and batch (--batch, the hub's --max-batch), each frame to the expert the generalist
  routes it to (as the hub receives them);
- hub: `expert-hub run` behind a private Mosquitto; this process stands in for edges and
  publishes --frames frames to their experts' topics keeping --window of them unanswered, in one
  or both modes:
  `batched`: as a replay-rate edge sends them (protocol v2): each --edge-batch consecutive frames
  grouped by expert, one message per expert;
  `single`: one frame per message, as cameras at camera rates send them.
Each mode runs --repeats times, alternating, with the raw loop measured again after every hub run
(this box's speed drifts from minute to minute: each ratio takes the mean of the raw rates just
before and after it). Prints one JSON line: the raw rates, and per mode the median run's hub rate,
hub_vs_raw (and every run's), the hub's mean batch,
and CPU microseconds per frame of the hub outside inference (its process CPU time less the
inference time its replies report), of the broker and of the generator (this process, while it
publishes and reads replies), each from the process's CPU time.

    python bench/hub_throughput.py --frames 10000
    python bench/hub_throughput.py --modes single --backend torch --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np
from proc_cpu import cpu_seconds

from askexpert.backends import open_backend
from askexpert.datasets import load_dataset
from askexpert.hardware import cpu_name, default_threads
from askexpert.localbroker import Broker, hub_args, spawn_quiet
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import FrameBatch, ReplyBatch, decode_replies, frames_topic, replies_filter
from askexpert.routing import Decision, decide
from askexpert.settings import CommonSettings
from askexpert.subscriber import wait_online

NODE = "tput"


def raw_rate(library, images: np.ndarray, keys: list[str], batch: int) -> float:
    library(images[:batch], keys[:batch])  # warm up
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        library(images[i : i + batch], keys[i : i + batch])
    return len(images) / (time.perf_counter() - t0)


def messages(images: np.ndarray, top: Decision, pack_id: str, edge_batch: int) -> list[tuple[str, FrameBatch]]:
    """(expert, frames) in send order: each edge_batch consecutive frames grouped by expert.
    Encoded before the clock starts: the generator's CPU per frame is then MQTT's, not msgpack's."""
    out = []
    for at in range(0, len(images), edge_batch):
        rows = np.arange(at, min(at + edge_batch, len(images)))
        for key in dict.fromkeys(top.expert[rows]):
            idx = rows[top.expert[rows] == key]
            t = np.full(len(idx), time.time())
            out.append(
                (
                    str(key),
                    FrameBatch(
                        NODE,
                        "bench",
                        pack_id,
                        idx,
                        t,
                        top.topk[idx],
                        np.full(top.topk[idx].shape, 0.3),
                        images[idx],
                        np.full(len(idx), 60000.0),
                    ),
                )
            )
    return out


def run_mode(a: argparse.Namespace, broker: Broker, plan: list[tuple[str, bytes, int]], n: int) -> dict:
    """Start a hub, send the plan keeping --window frames unanswered, collect every reply."""
    opts = ["--backend", a.backend, "--precision", a.precision, "--threads", str(a.threads), "--max-batch", str(a.batch)]
    hub = spawn_quiet("expert_hub.cli", *hub_args(a.pack, broker.url, "tput-hub", *opts, "--queue-size", str(n)))
    client = MqttClient(CommonSettings(broker=broker.url), "edge", NODE)
    replies: list[ReplyBatch] = []
    answered = [0]
    done = threading.Condition()

    def on_reply(message) -> None:
        reply = decode_replies(message.payload)
        with done:
            replies.append(reply)
            answered[0] += len(reply)
            done.notify_all()

    client.subscribe(replies_filter("ate/v1", NODE), on_reply)
    try:
        wait_online(CommonSettings(broker=broker.url), "hub", "tput-hub")
        client.start()
        client.wait_connected(10)
        time.sleep(0.5)
        sent = 0
        cpu0 = (cpu_seconds(hub.pid), cpu_seconds(broker.proc.pid), cpu_seconds())
        t0 = time.perf_counter()
        for topic, payload, count in plan:
            if sent - answered[0] + count > a.window:
                with done:
                    if not done.wait_for(lambda c=count, s=sent: s - answered[0] + c <= a.window, 60):
                        raise TimeoutError(f"no reply for 60 s after {answered[0]} of {n}")
            client.publish(topic, payload, qos=0)
            sent += count
        with done:
            if not done.wait_for(lambda: answered[0] >= n, 60):
                raise TimeoutError(f"{answered[0]} of {n} answered")
        wall = time.perf_counter() - t0
        hub_cpu, broker_cpu, gen_cpu = (b - a_ for a_, b in zip(cpu0, (cpu_seconds(hub.pid), cpu_seconds(broker.proc.pid), cpu_seconds())))
    finally:
        client.stop()
        hub.terminate()
        hub.wait(10)
    infer_s = sum(r.infer_ms for r in replies) / 1000  # one node: one reply per hub batch
    us = 1e6 / n
    return {
        "messages": len(plan),
        "hub_fps": round(n / wall, 1),
        "hub_mean_batch": round(float(np.mean([r.batch for r in replies])), 1),
        "hub_infer_share": round(infer_s / wall, 3),
        "cpu_us_per_frame": {
            "hub_outside_inference": round((hub_cpu - infer_s) * us, 1),
            "hub_total": round(hub_cpu * us, 1),
            "broker": round(broker_cpu * us, 1),
            "generator": round(gen_cpu * us, 1),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64, help="the raw loop's batch and the hub's --max-batch")
    ap.add_argument("--backend", default="onnx", help="torch | onnx")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="inference threads, raw and hub alike (0: the hub's default, half the cores)")
    ap.add_argument("--window", type=int, default=256, help="frames published and not yet answered, at most")
    ap.add_argument("--modes", default="batched,single", help="batched | single | both, comma-separated")
    ap.add_argument("--edge-batch", type=int, default=32, help="batched: frames per edge batch (the edge's --batch-size)")
    ap.add_argument("--repeats", type=int, default=3, help="hub runs per mode, alternating; the median run is reported")
    a = ap.parse_args()
    pack = Pack.load(a.pack)
    images = load_dataset("fashion-mnist", "test").images[: a.frames]
    backend = open_backend(a.backend, threads=a.threads, precision=a.precision)
    top = decide(backend.classifier(pack, pack.manifest.generalist)(images), pack.manifest.partition, pack.manifest.k)
    library, keys = backend.experts(pack, pack.manifest.experts), [str(k) for k in top.expert]
    modes = a.modes.split(",")
    plans = {
        mode: [
            (frames_topic("ate/v1", key, NODE), frames.encode(), len(frames))
            for key, frames in messages(images, top, pack.pack_id, a.edge_batch if mode == "batched" else 1)
        ]
        for mode in modes
    }
    # the raw loop before and after every hub run: this box's speed drifts, a ratio takes the raw rates beside it
    raws = [raw_rate(library, images, keys, a.batch)]
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    broker = Broker().start()
    try:
        for _ in range(a.repeats):
            for mode in modes:
                result = run_mode(a, broker, plans[mode], len(images))
                raws.append(raw_rate(library, images, keys, a.batch))
                runs[mode].append({**result, "hub_vs_raw": round(result["hub_fps"] / statistics.mean(raws[-2:]), 3)})
    finally:
        broker.stop()
    out: dict = {
        "bench": "hub_throughput",
        "cpu": cpu_name(),
        "frames": len(images),
        "backend": a.backend,
        "precision": a.precision,
        "threads": a.threads or default_threads(),
        "batch": a.batch,
        "window": a.window,
        "repeats": a.repeats,
        "raw_experts_fps": round(statistics.median(raws), 1),
        "raw_runs": [round(r, 1) for r in raws],
    }
    for mode, results in runs.items():
        middle = sorted(results, key=lambda r: r["hub_vs_raw"])[len(results) // 2]  # the median run, whole
        out[mode] = {**middle, "hub_vs_raw_runs": [r["hub_vs_raw"] for r in results]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
