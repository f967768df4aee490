"""How many acknowledged labels a Mosquitto persistence setting keeps through a kill -9.

Labels are queued for an offline durable consumer (persistent session, QoS 1), each acknowledged
by the broker; then the broker is killed -9 and restarted on the same data, and the consumer
collects what survived. Prints one JSON line per setting: survived of sent, and how long the
labels took to queue (the cost of saving more often).

    python bench/broker_persistence.py --labels 600 5000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from askexpert.localbroker import Broker, free_port
from askexpert.mqtt import MqttClient
from askexpert.settings import CommonSettings

SETTINGS = {
    "old: autosave_interval 60": "autosave_interval 60",
    "autosave_on_changes, interval 1": "autosave_on_changes true\nautosave_interval 1",
    "autosave_on_changes, interval 10 (shipped)": "autosave_on_changes true\nautosave_interval 10",
    "autosave_on_changes, interval 100": "autosave_on_changes true\nautosave_interval 100",
}


def durable_consumer(port: int) -> tuple[mqtt.Client, list]:
    got: list = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="durable", protocol=mqtt.MQTTv5)
    c.on_message = lambda client, userdata, msg: got.append(msg.payload)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe("ate/v1/nodes/cam1/labels", qos=1)
    time.sleep(0.5)
    return c, got


def run(name: str, conf: str, n: int) -> dict:
    data = tempfile.mkdtemp(prefix="ate-persist-")
    os.chmod(data, 0o777)  # Mosquitto writes it after dropping root
    port = free_port()
    broker = Broker(port=port, extra_conf=f"persistence true\npersistence_location {data}/\nmax_queued_messages 100000\n{conf}\n")
    broker.start()
    consumer, _ = durable_consumer(port)
    consumer.disconnect()
    consumer.loop_stop()
    pub = MqttClient(CommonSettings(broker=f"mqtt://127.0.0.1:{port}"), "edge", "persist-bench")
    pub.start()
    pub.wait_connected(10)
    t0 = time.perf_counter()
    for i in range(n):
        pub.publish("ate/v1/nodes/cam1/labels", b"label %d" % i, qos=1)
    acked = pub.flush(60)
    queue_s = time.perf_counter() - t0
    os.kill(broker.proc.pid, signal.SIGKILL)
    broker.proc.wait()
    pub.client.loop_stop()
    broker.start()
    consumer, got = durable_consumer(port)
    time.sleep(2.0)
    consumer.disconnect()
    consumer.loop_stop()
    broker.stop()
    return {
        "bench": "broker_persistence",
        "setting": name,
        "labels": n,
        "all_acknowledged": acked,
        "survived_kill9": len(set(got)),
        "queue_s": round(queue_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/broker_persistence.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", type=int, nargs="+", default=[600])
    a = p.parse_args(argv)
    for n in a.labels:
        for name, conf in SETTINGS.items():
            print(json.dumps(run(name, conf, n)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
