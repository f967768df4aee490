"""askexpert.subscriber's durable consumer across broker restarts, on a real Mosquitto: a session
the broker kept loses nothing; a session the broker lost is reported (once is not a takeover)."""

from __future__ import annotations

import time

from helpers import broker_writable

from askexpert.localbroker import Broker
from askexpert.mqtt import MqttClient
from askexpert.settings import CommonSettings
from askexpert.subscriber import Subscriber


def publish(broker: Broker, ids: range) -> None:
    """QoS 1 messages from a client that connects right away (before the subscriber is back)."""
    pub = MqttClient(CommonSettings(broker=broker.url), "edge", "pub", announce=False)
    pub.start()
    assert pub.wait_connected(10)
    for i in ids:
        pub.publish("t/labels", b"%d" % i)
    assert pub.flush(10)
    pub.stop()


def received(sub: Subscriber) -> set[int]:
    return {int(p) for _, p in sub.raw}


def test_a_durable_session_the_broker_kept_loses_nothing_across_a_restart():
    """The cause of issue 19's loss, fixed in the test broker: with a persistence folder the broker
    can write, the session survives and what came before the subscriber was back is delivered."""
    broker = Broker()
    broker.extra_conf = f"persistence true\npersistence_location {broker_writable(broker.workdir)}/\n"
    broker.start()
    try:
        sub = Subscriber(CommonSettings(broker=broker.url), "t/labels", ident="durable", session_expiry_s=600).start()
        broker.restart(down_s=0.2)
        publish(broker, range(100))
        sub.wait_for(lambda: len(received(sub)) == 100, 30)
        sub.stop()
    finally:
        broker.stop()
    assert (received(sub), sub.sessions_lost, sub.taken_over) == (set(range(100)), 0, None)


def test_a_session_lost_once_is_reported_and_the_subscriber_goes_on(broker):
    """A broker without persistence forgets the session at a restart: the subscriber counts and logs
    it, resubscribes, and keeps receiving (once is a restart, not a takeover)."""
    sub = Subscriber(CommonSettings(broker=broker.url), "t/labels", ident="durable2", session_expiry_s=600).start()
    try:
        broker.restart(down_s=0.2)
        deadline = time.monotonic() + 30
        while not received(sub) and time.monotonic() < deadline:  # until it is back and subscribed
            publish(broker, range(1))
            sub.wait_for(lambda: bool(sub.raw), 0.5)
        publish(broker, range(1, 50))
        sub.wait_for(lambda: len(received(sub)) == 50, 10)
    finally:
        sub.stop()
    assert (sub.client.connects, sub.sessions_lost, sub.taken_over) == (2, 1, None)
    assert received(sub) == set(range(50))


def test_sessions_lost_to_failovers_between_independent_brokers_are_not_a_takeover():
    """A durable subscriber on `A,B` (no persistence, no shared state): A killed, it moves to B (no
    session there); A back, B killed, it moves back to A (which lost the session with its restart).
    Two sessions missing within seconds, each after a failover: said, not read as another client
    on its id; it keeps receiving on A."""
    a, b = Broker().start(), Broker().start()
    sub = Subscriber(CommonSettings(broker=f"{a.url},{b.url}"), "t/labels", ident="durable3", session_expiry_s=600).start()
    try:
        for gone, to in ((a, b), (b, a)):
            gone.proc.kill()
            gone.proc.wait()
            deadline = time.monotonic() + 30
            while not (sub.client.connected.is_set() and sub.client.broker == to.url) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sub.client.broker == to.url and sub.client.wait_subscribed(10)
            gone.start()  # back on its port, empty
        publish(a, range(20))
        sub.wait_for(lambda: len(received(sub)) == 20, 10)
    finally:
        sub.stop()
        a.stop()
        b.stop()
    assert (sub.client.failovers, sub.sessions_lost, sub.taken_over) == (2, 2, None)
    assert received(sub) == set(range(20))
