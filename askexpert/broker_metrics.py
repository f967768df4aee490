"""The broker's own numbers for Prometheus, read from Mosquitto's $SYS topics.

Mosquitto has no /metrics; it publishes its counters under `$SYS/broker/...` (retained, every
`sys_interval`, 10 s by default). This client reads the few an operator acts on and serves them
at /metrics beside the components' (`python -m askexpert.broker_metrics run`, the monitoring
profile's `broker-metrics`). It logs in as a user of its own that may read `$SYS/#` (`metrics` in
docker/mosquitto/acl): one user is one connection. Written here rather than taken from an
exporter image because it is tested against the broker the tests run (tests/test_monitoring.py),
runs from the hub image that every hub box already has (Jetson and x86), and takes the components'
broker list, TLS and password settings.
"""

from __future__ import annotations

import argparse
import re
import signal
import threading

import paho.mqtt.client as mqtt
from prometheus_client import Gauge

from askexpert.cli_common import command_parser, dispatch, load_settings
from askexpert.log import get_logger
from askexpert.mqtt import MqttClient
from askexpert.ops import start_ops_server
from askexpert.settings import CommonSettings

log = get_logger("broker_metrics")
NUMBER = re.compile(rb"-?\d+(\.\d+)?")  # "$SYS/broker/uptime" reads "1234 seconds"
SYS = {
    "$SYS/broker/uptime": Gauge("ate_broker_uptime_seconds", "Seconds since the broker started"),
    "$SYS/broker/clients/connected": Gauge("ate_broker_clients_connected", "Clients connected to the broker"),
    "$SYS/broker/publish/messages/received": Gauge("ate_broker_publish_received", "PUBLISH messages received since the broker started"),
    "$SYS/broker/publish/messages/sent": Gauge("ate_broker_publish_sent", "PUBLISH messages sent since the broker started"),
    "$SYS/broker/publish/messages/dropped": Gauge(
        "ate_broker_publish_dropped", "PUBLISH messages dropped since the broker started (inflight and queue limits)"
    ),
}
for _gauge in SYS.values():
    _gauge.set(float("nan"))  # unknown until the broker has said it


def on_sys(message: mqtt.MQTTMessage) -> None:
    """One $SYS value into its gauge; what is not a number is ignored (a payload from the broker)."""
    gauge = SYS.get(message.topic)
    if gauge is not None and (m := NUMBER.match(message.payload[:64])):
        gauge.set(float(m.group()))


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings, args)
    client = MqttClient(settings, "broker-metrics", settings.username or "metrics", announce=False)
    for topic in SYS:
        client.subscribe(topic, on_sys, qos=0)
    ops = start_ops_server(settings.metrics_port, lambda: {"healthy": client.connected.is_set(), **client.broker_report()})
    client.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    ops.stop()
    client.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, _ = command_parser("broker-metrics", __doc__, "serve the broker's $SYS numbers at /metrics", CommonSettings, cmd_run)
    return dispatch(parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
