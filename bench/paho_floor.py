"""What paho-mqtt itself costs a receiver per message: the floor under any per-message work.

A subscriber (this process: paho's network thread and an on_message that only counts) receives
--messages messages of --size bytes from a publisher in another process, through a private
Mosquitto, at a pace it keeps up with; for each case (MQTT 5 or 3.1.1, QoS 0 or 1, with or
without one v5 property, Message Expiry, on every message) it reports this process's CPU
microseconds per message. Prints one JSON line.

    python bench/paho_floor.py --messages 20000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion
from proc_cpu import cpu_seconds

from askexpert.hardware import cpu_name
from askexpert.localbroker import Broker

PUBLISHER = """
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt import __version__ as paho_version
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
port, protocol, qos, expiry, n, size = (int(x) for x in sys.argv[1:])
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
c.connect("127.0.0.1", port)
c.loop_start()
time.sleep(0.5)
props = None
if expiry:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 5
payload = bytes(size)
for i in range(n):
    c.publish("ate/v1/experts/0-2/frames/cam1", payload, qos=qos, properties=props)
    if i % 20 == 19:
        time.sleep(0.002)  # about 10,000 messages/s at most: the subscriber keeps up, the broker queues nothing
time.sleep(2)
c.disconnect()
"""

CASES = [
    ("5", mqtt.MQTTv5, 1, True),
    ("5", mqtt.MQTTv5, 1, False),
    ("5", mqtt.MQTTv5, 0, False),
    ("3.1.1", mqtt.MQTTv311, 1, False),
    ("3.1.1", mqtt.MQTTv311, 0, False),
]


def receive(port: int, protocol: int, qos: int, expiry: bool, n: int, size: int) -> float:
    """CPU microseconds per message of a paho subscriber that only counts what it receives."""
    got, done = [0], threading.Event()

    def on_message(client, userdata, message) -> None:
        got[0] += 1
        if got[0] >= n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe("ate/v1/experts/+/frames/+", qos=1)
    c.loop_start()
    time.sleep(0.3)
    pub = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(port), str(protocol), str(qos), str(int(expiry)), str(n), str(size)])
    try:
        while got[0] == 0 and pub.poll() is None:
            time.sleep(0.001)
        cpu0 = cpu_seconds()
        first = got[0]
        if not done.wait(120):
            raise TimeoutError(f"{got[0]} of {n} messages")
        return (cpu_seconds() - cpu0) / (got[0] - first) * 1e6
    finally:
        pub.wait(30)
        c.loop_stop()
        c.disconnect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=900, help="payload bytes (a 28x28 frame in protocol v2 is about 900)")
    a = ap.parse_args()
    broker = Broker().start()
    out: dict = {"bench": "paho_floor", "cpu": cpu_name(), "paho": paho_version, "us_per_message": {}}
    try:
        for version, protocol, qos, expiry in CASES:
            name = f"mqtt{version} qos{qos}" + (" +expiry" if expiry else "")
            out["us_per_message"][name] = round(receive(broker.port, protocol, qos, expiry, a.messages, a.size), 1)
    finally:
        broker.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
