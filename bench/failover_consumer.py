"""A durable label consumer through two failovers between independent brokers (issue 29, case 1).

Edge, hub and a durable `LabelSubscriber` all on `--broker A,B`: two Mosquittos without persistence,
as README's broker-list layout. Mid-stream kill -9 A and start it again (empty); some seconds later
kill -9 B. Beside it, the layout README gives a consumer that must lose nothing on independent
brokers: a durable subscriber on each broker, deduplicated on (node, run, frame). Prints one JSON
line: the frames each consumer got of those the edge labelled, the sessions the list consumer saw
lost, and whether it read them as a takeover (it must not: each came after a failover).

    python bench/failover_consumer.py --frames 1200 --fps 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

from askexpert.localbroker import Broker, edge_args, spawn
from askexpert.log import setup_logging
from askexpert.settings import CommonSettings
from askexpert.subscriber import LabelSubscriber, wait_online


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def kill(broker: Broker) -> None:
    broker.proc.kill()
    broker.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default="packs/fashion-mnist")
    ap.add_argument("--frames", type=int, default=1200)
    ap.add_argument("--fps", type=float, default=100)
    ap.add_argument("--tau", default="0.9")
    ap.add_argument("--second-kill-after-s", type=float, default=6.0, help="from A's restart to B's kill")
    a = ap.parse_args()
    setup_logging("warning")  # stdout is the JSON line
    A, B = Broker().start(), Broker().start()
    both = f"{A.url},{B.url}"
    hub = spawn("expert_hub.cli", "run", "--pack", a.pack, "--broker", both, "--hub-id", "fo-hub", stdout=subprocess.DEVNULL)
    subs: list[LabelSubscriber] = []
    try:
        wait_online(CommonSettings(broker=A.url), "hub", "fo-hub", timeout=120)
        sub = LabelSubscriber(CommonSettings(broker=both), "fo-edge", ident="fo-durable", session_expiry_s=600).start()
        each = [
            LabelSubscriber(CommonSettings(broker=b.url), "fo-edge", ident=f"fo-each-{i}", session_expiry_s=600).start()
            for i, b in enumerate((A, B))
        ]
        subs = [sub, *each]
        args = edge_args(a.pack, both, "fo-edge", a.frames, "--fps", str(a.fps), "--tau", a.tau)
        edge = spawn("edge_node.cli", *args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        wait_until(lambda: sub.count >= a.frames // 4, 120, "labels before the first kill")
        kill(A)
        wait_until(lambda: sub.client.broker == B.url and sub.client.connected.is_set(), 30, "the consumer on B")
        A.start()
        time.sleep(a.second_kill_after_s)
        kill(B)
        out, _ = edge.communicate(timeout=300)
        summary = json.loads(out.strip().splitlines()[-1])
        sub.wait(a.frames, idle_timeout=10)
        print(
            json.dumps(
                {
                    "frames": a.frames,
                    "edge_labelled": summary.get("frames"),
                    "edge_unacknowledged": summary.get("unacknowledged"),
                    "consumer_frames": sub.count,
                    "consumer_labels": len(sub.labels),
                    "consumer_failovers": sub.client.failovers,
                    "sessions_lost": sub.sessions_lost,
                    "taken_over": sub.taken_over,
                    "consumer_broker_at_end": "A" if sub.client.broker == A.url else "B",
                    "per_broker_consumers_frames": len({(m.run, m.frame_id) for e in each for m in e.labels}),
                }
            )
        )
    finally:
        for s in subs:
            s.stop()
        hub.terminate()
        hub.wait(30)
        A.stop()
        B.stop()


if __name__ == "__main__":
    main()
