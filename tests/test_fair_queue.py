"""The hub's waiting messages: one line per sender node, taken in turns; past capacity the longest
line loses its oldest message, so a node that floods the hub evicts its own messages first."""

from __future__ import annotations

import queue
import threading

import pytest

from expert_hub.fair_queue import FairQueue


def node_of(item: str) -> str:
    return item.split(":")[0]


def test_nodes_take_turns_whatever_the_arrival_order():
    q: FairQueue[str] = FairQueue(100, node_of)
    for i in range(5):
        q.put(f"flood:{i}")
    q.put("cam:0")
    q.put("cam:1")
    assert [q.get_nowait() for _ in range(7)] == ["flood:0", "cam:0", "flood:1", "cam:1", "flood:2", "flood:3", "flood:4"]
    with pytest.raises(queue.Empty):
        q.get_nowait()
    assert q.qsize() == 0


def test_past_capacity_the_longest_line_loses_its_oldest():
    q: FairQueue[str] = FairQueue(4, node_of)
    assert [q.put(x) for x in ("cam:0", "flood:0", "flood:1", "flood:2")] == [0, 0, 0, 0]
    assert q.put("flood:3") == 1 and q.put("cam:1") == 1  # each time the flood's oldest goes
    assert q.qsize() == 4
    assert [q.get_nowait() for _ in range(4)] == ["cam:0", "flood:2", "cam:1", "flood:3"]


def test_get_waits_for_a_message_until_its_timeout():
    q: FairQueue[str] = FairQueue(4, node_of)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    threading.Timer(0.05, q.put, args=("cam:0",)).start()
    assert q.get(timeout=10) == "cam:0"


@pytest.mark.slow
def test_a_flood_from_one_node_does_not_starve_another(tiny_pack, broker):
    """Another node floods the hub past what it can answer (64-frame messages at up to 400 a
    second, about 25,000 frames/s, each claiming 60 s left), while a real edge streams at 80
    frames/s offloading every frame with a 2 s deadline (with 1 s, 10 of 400 fell back on a box
    busy with other work): the edge's frames keep their answers (its line is short, nodes take
    turns, the flood's claim is cut to 5 s and its own oldest messages are the ones evicted). A flood faster than the hub can even read its socket would wait in the
    broker ahead of everyone's frames: that needs the broker's limits, not the hub's."""
    import time

    import numpy as np
    import paho.mqtt.client as mqtt
    from helpers import frames, run_edge, start_hub, stop, wait_hub_online
    from paho.mqtt.enums import CallbackAPIVersion

    from askexpert.pack import Pack
    from askexpert.protocol import frames_topic

    payload = frames("flood", list(range(64)), Pack.load(tiny_pack).pack_id, np.zeros((28, 28, 1), np.uint8), deadline_ms=60_000.0).encode()
    done, sent = threading.Event(), [0]

    def flood() -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        while not done.is_set():
            c.publish(frames_topic("ate/v1", "0-2", "flood"), payload, qos=0)
            sent[0] += 64
            time.sleep(0.0025)
        c.disconnect()
        c.loop_stop()

    hub = start_hub(tiny_pack, broker.url, "--hub-id", "fair")
    flooder = threading.Thread(target=flood)
    try:
        wait_hub_online(broker.url, "fair")
        flooder.start()
        time.sleep(1.0)  # the flood is on before the edge starts
        args = ("--node-id", "cam3", "--source", "dataset:fashion-mnist:test", "--max-frames", "400", "--fps", "80")
        summary = run_edge(tiny_pack, broker.url, *args, "--tau", "1.0", "--deadline-ms", "2000")
    finally:
        done.set()
        flooder.join(10)
        stop(hub)
    print(f"flood: {sent[0]} frames sent; the edge: {summary['fallback']} of 400 fell back")
    assert sent[0] > 50 * 400  # far more flood frames than the edge's 400
    assert summary["frames"] == 400 and summary["fallback"] <= 4, summary  # within 1% of its offloads
