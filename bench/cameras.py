"""A camera fleet in one process: N cameras at F frames/s each, offloading to one hub as their edges
would, through a private Mosquitto.

Each camera replays the Fashion-MNIST test split from its own offset, its frames spread evenly in
time (cameras are not in step). A frame whose edge confidence (the pack's generalist, computed
once) is below the pack's tau goes to the expert Algorithm 1 routes it to, one frame per message
(protocol v2, QoS 0), with the edges' deadline (--deadline-ms) in the frame; frames
kept at the edge never touch the network. One hub (`expert-hub run`, its defaults) answers, or
--hubs processes of one share group (how a hub uses several cores).
Per N: offloads sent, answered in time, answered late, never answered (dropped by the hub as too
late, counted by it as expired), round-trip p50/p99 over all cameras and the worst camera's p99,
the CPU seconds per second of the hub, the broker and this generator, and how far the generator
fell behind its schedule (its frames are encoded before the clock starts).

With --find-max it then reports the largest N of --cameras that the hub holds (every offload
answered in time, p99 <= --p99-ms) and runs 1.5x that N: past its capacity the hub should refuse
early what it cannot answer in time and keep answering the rest (`answered_in_time_per_s` at
1.5x over that at the largest N). Prints one JSON line.

    python bench/cameras.py --cameras 100,200 --seconds 10
    python bench/cameras.py --cameras 100,200,300,400 --find-max
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
from collections import defaultdict

import numpy as np
from proc_cpu import cpu_seconds

from askexpert.backends import open_backend
from askexpert.datasets import load_dataset
from askexpert.hardware import cpu_name
from askexpert.localbroker import Broker, hub_args, spawn_quiet
from askexpert.mqtt import MqttClient
from askexpert.pack import Pack
from askexpert.protocol import FrameBatch, decode_replies, frames_topic
from askexpert.routing import decide
from askexpert.settings import CommonSettings
from askexpert.subscriber import wait_online


class Fleet:
    """The cameras' sender (one thread) and the replies' bookkeeping (paho's thread)."""

    def __init__(
        self, client: MqttClient, images: np.ndarray, offload: np.ndarray, keys: np.ndarray, pack_id: str, deadline_ms: float
    ) -> None:
        self.client, self.images, self.offload, self.keys, self.pack_id = client, images, offload, keys, pack_id
        self.deadline_s = deadline_ms / 1000
        self.sent: dict[tuple[str, int], float] = {}  # (node, frame id) -> monotonic send time
        self.rtt: dict[str, list[float]] = defaultdict(list)  # per camera, ms, answered in time
        self.late = 0
        self.lock = threading.Lock()

    def on_reply(self, message) -> None:
        reply, now = decode_replies(message.payload), time.monotonic()
        with self.lock:
            for fid in reply.frame_ids.tolist():
                t = self.sent.pop((reply.node, fid), None)
                if t is None:
                    continue
                if now - t <= self.deadline_s:
                    self.rtt[reply.node].append((now - t) * 1000)
                else:
                    self.late += 1

    def plan(self, cameras: int, fps: float, seconds: float, start_wall: float) -> list[tuple[float, str, int, str, bytes]]:
        """Every camera's offloads as (due, node, frame id, expert, payload), due in seconds from the
        start: encoded before the clock starts, each frame stamped with its due time on the wall
        clock, so the generator's CPU per frame is MQTT's alone."""
        out = []
        for j in range(int(seconds * fps)):
            for c in range(cameras):
                i = (c * 997 + j) % len(self.images)
                if not self.offload[i]:
                    continue
                due, node = (j + c / cameras) / fps, f"cam{c}"
                frames = FrameBatch(
                    node,
                    "fleet",
                    self.pack_id,
                    np.array([j]),
                    np.array([start_wall + due]),
                    np.zeros((1, 2), np.int32),
                    np.zeros((1, 2), np.float32),
                    self.images[i : i + 1],
                    np.array([self.deadline_s * 1000]),
                    t_sent=start_wall + due,
                )
                out.append((due, node, j, str(self.keys[i]), frames.encode()))
        return out

    def play(self, plan: list[tuple[float, str, int, str, bytes]], start_wall: float) -> tuple[int, float]:
        """Send a plan from `start_wall` on: (offloads sent, the largest lag of a send behind its
        due time, ms: how far this generator fell behind)."""
        start = time.monotonic() + (start_wall - time.time())
        lag = 0.0
        for due, node, fid, expert, payload in plan:
            if (wait := start + due - time.monotonic()) > 0:
                time.sleep(wait)
            now = time.monotonic()
            lag = max(lag, now - start - due)
            with self.lock:
                self.sent[(node, fid)] = now
            self.client.publish(frames_topic("ate/v1", expert, node), payload, qos=0)
        return len(plan), lag * 1000

    def reset(self) -> None:
        with self.lock:
            self.sent.clear()
            self.rtt.clear()
            self.late = 0


def run(fleet: Fleet, pids: dict[str, int], cameras: int, a: argparse.Namespace) -> dict:
    fleet.reset()
    start_wall = time.time() + 1.0 + cameras * a.fps * a.seconds * 30e-6  # after the encoding
    plan = fleet.plan(cameras, a.fps, a.seconds, start_wall)
    time.sleep(max(0.0, start_wall - time.time() - 0.05))
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    sent, lag_ms = fleet.play(plan, start_wall)
    time.sleep(fleet.deadline_s + 0.5)  # the last answers, or their deadlines
    wall = time.monotonic() - t0
    cpu = {name: round((cpu_seconds(pid) - cpu0[name]) / wall, 3) for name, pid in pids.items()}
    with fleet.lock:
        rtts = {node: list(v) for node, v in fleet.rtt.items()}
        late, unanswered = fleet.late, len(fleet.sent)
    every = np.concatenate([np.asarray(v) for v in rtts.values()]) if rtts else np.zeros(0)
    in_time = len(every)
    return {
        "cameras": cameras,
        "offloads_per_s": round(sent / a.seconds, 1),
        "sent": sent,
        "answered_in_time": in_time,
        "answered_late": late,
        "never_answered": unanswered,
        "answered_in_time_per_s": round(in_time / a.seconds, 1),
        "p50_ms": round(float(np.percentile(every, 50)), 1) if in_time else None,
        "p99_ms": round(float(np.percentile(every, 99)), 1) if in_time else None,
        "worst_camera_p99_ms": round(max(float(np.percentile(v, 99)) for v in rtts.values() if v), 1) if in_time else None,
        "cpu_per_s": cpu,
        "generator_max_lag_ms": round(lag_ms, 1),
    }


def holds(r: dict, p99_ms: float) -> bool:
    return r["sent"] > 0 and r["answered_in_time"] == r["sent"] and r["p99_ms"] is not None and r["p99_ms"] <= p99_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--cameras", default="100,200", help="comma-separated fleet sizes, run in order")
    ap.add_argument("--fps", type=float, default=30.0, help="frames per second of each camera")
    ap.add_argument("--seconds", type=float, default=10.0, help="per fleet size")
    ap.add_argument("--tau", type=float, default=None, help="default: the pack's")
    ap.add_argument("--deadline-ms", type=float, default=1000.0)
    ap.add_argument("--p99-ms", type=float, default=100.0, help="--find-max: the largest N must keep p99 at or under this")
    ap.add_argument("--find-max", action="store_true", help="then run 1.5x the largest N held")
    ap.add_argument("--hub-args", default="", help="extra flags for the hub, e.g. '--backend torch --threads 2'")
    ap.add_argument("--hubs", type=int, default=1, help="hub processes in one share group (a hub across several cores)")
    a = ap.parse_args()
    pack = Pack.load(a.pack)
    tau = pack.manifest.tau if a.tau is None else a.tau
    images = load_dataset("fashion-mnist", "test").images
    d = decide(open_backend("onnx").classifier(pack, pack.manifest.generalist)(images), pack.manifest.partition, pack.manifest.k)
    offload = d.offloaded(tau)
    broker = Broker().start()
    group = ["--share-group", "fleet"] if a.hubs > 1 else []
    hubs = [
        spawn_quiet("expert_hub.cli", *hub_args(a.pack, broker.url, f"fleet-hub{i}", *group, *a.hub_args.split())) for i in range(a.hubs)
    ]
    client = MqttClient(CommonSettings(broker=broker.url), "edge", "fleet")
    fleet = Fleet(client, images, offload, d.expert, pack.pack_id, a.deadline_ms)
    client.subscribe("ate/v1/nodes/+/replies/+", fleet.on_reply)
    out: dict = {
        "bench": "cameras",
        "cpu": cpu_name(),
        "hubs": a.hubs,
        "fps_per_camera": a.fps,
        "tau": tau,
        "alpha": round(float(offload.mean()), 4),
        "deadline_ms": a.deadline_ms,
    }
    try:
        for i in range(a.hubs):
            wait_online(CommonSettings(broker=broker.url), "hub", f"fleet-hub{i}")
        client.start()
        client.wait_subscribed(10)
        pids = {**{f"hub{i}": h.pid for i, h in enumerate(hubs)}, "broker": broker.proc.pid, "generator": os.getpid()}
        warm = time.time() + 0.5
        fleet.play(fleet.plan(20, a.fps, 1.0, warm), warm)  # warm-up
        time.sleep(1.5)
        runs = [run(fleet, pids, int(n), a) for n in a.cameras.split(",")]
        out["runs"] = runs
        if a.find_max:
            held = [r for r in runs if holds(r, a.p99_ms)]
            if held:
                best = max(held, key=lambda r: r["cameras"])
                over = run(fleet, pids, math.ceil(1.5 * best["cameras"]), a)
                out["largest_held"] = best["cameras"]
                out["at_1_5x"] = over
                out["in_time_1_5x_vs_max"] = round(over["answered_in_time_per_s"] / best["answered_in_time_per_s"], 3)
            else:
                out["largest_held"] = None
    finally:
        client.stop()
        for h in hubs:
            h.terminate()
            h.wait(10)
        broker.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
