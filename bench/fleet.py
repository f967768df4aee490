"""A fleet on one broker: N edge nodes and M expert hubs (one share group), paced streams.

Each edge replays the Fashion-MNIST test split at --fps; a plain subscriber (a user's consumer)
collects every label. Prints one JSON line: labels per second, exactly-once (frames with no label,
frames with more than one), label sources and fallbacks, and how many frames each hub answered.

    python bench/fleet.py --pack packs/fashion-mnist --edges 4 --hubs 2 --frames 500 --fps 50
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from askexpert.localbroker import Broker, edge_args, edge_summary, hub_args, spawn_edge, spawn_quiet
from askexpert.protocol import decode_label, decode_replies, parse_replies_topic
from askexpert.settings import CommonSettings
from askexpert.subscriber import Subscriber, wait_online


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/fleet.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", default="packs/fashion-mnist")
    p.add_argument("--edges", type=int, default=4)
    p.add_argument("--hubs", type=int, default=2)
    p.add_argument("--frames", type=int, default=500, help="frames per edge")
    p.add_argument("--fps", type=float, default=50.0, help="pace of each edge")
    p.add_argument("--tau", type=float, default=None, help="default: the pack's")
    p.add_argument("--deadline-ms", type=float, default=1000.0)
    a = p.parse_args(argv)

    broker = Broker().start()
    hubs = [spawn_quiet("expert_hub.cli", *hub_args(a.pack, broker.url, f"fleet-hub{i}", "--share-group", "fleet")) for i in range(a.hubs)]
    consumer = None
    try:
        for i in range(a.hubs):
            wait_online(CommonSettings(broker=broker.url), "hub", f"fleet-hub{i}")
        # every label and reply of the fleet, as a user's own subscriber would see them
        consumer = Subscriber(CommonSettings(broker=broker.url), "ate/v1/nodes/+/labels", "ate/v1/nodes/+/replies/+").start()
        extra = ["--tau", repr(a.tau)] if a.tau is not None else []
        t0 = time.monotonic()
        pace = ["--fps", repr(a.fps), "--deadline-ms", repr(a.deadline_ms), *extra]
        edges = [spawn_edge(*edge_args(a.pack, broker.url, f"fleet-cam{i}", a.frames, *pace)) for i in range(a.edges)]
        summaries = [edge_summary(e, 600) for e in edges]
        wall = time.monotonic() - t0
        time.sleep(0.5)  # the last labels on their way to the consumer
        with consumer.changed:
            raw = list(consumer.raw)
        labels = [decode_label(p) for t, p in raw if t.endswith("/labels")]
        answered: Counter[str] = Counter()
        for t, p in raw:
            if "/replies/" in t:
                answered[parse_replies_topic("ate/v1", t)[1]] += len(decode_replies(p))
    finally:
        if consumer is not None:
            consumer.stop()
        for h in hubs:
            h.terminate()
            h.wait(10)
        broker.stop()
    per_frame = Counter((m.node, m.frame_id) for m in labels)
    expected = a.edges * a.frames
    print(
        json.dumps(
            {
                "bench": "fleet",
                "pack": str(Path(a.pack)),
                "edges": a.edges,
                "hubs": a.hubs,
                "frames": expected,
                "fps_per_edge": a.fps,
                "labels_per_s": round(len(labels) / wall, 1),
                "wall_s": round(wall, 2),
                "missing": expected - len(per_frame),
                "duplicates": sum(n - 1 for n in per_frame.values() if n > 1),
                "sources": dict(Counter(m.source for m in labels)),
                "fallbacks": sum(s["fallback"] for s in summaries),
                "per_hub_answered": dict(sorted(answered.items())),
                "edge_exit_ok": all(s.get("unacknowledged", 0) == 0 for s in summaries),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
