"""MqttClient.flush waits for the broker's acknowledgements of QoS 1 messages, and nothing else."""

import os
import signal
import time

from askexpert.mqtt import MqttClient, match_filter
from askexpert.settings import CommonSettings


def test_flush_waits_for_qos1_acks_not_qos0_writes(broker):
    c = MqttClient(CommonSettings(broker=broker.url), "edge", "flush-test")
    c.start()
    assert c.wait_connected(10)
    assert c.flush(timeout=10)  # the retained status announced on connect
    os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker reads nothing and acknowledges nothing
    try:
        for i in range(20):
            c.publish("t/labels", b"label %d" % i, qos=1)
        for _ in range(50):  # stats-like QoS 0 messages: paho reports each as "published" once written
            c.publish("t/stats", b"stats", qos=0)
        time.sleep(0.3)
        assert c.unacknowledged() == 20
        assert c.flush(timeout=0.5) is False, "no QoS 1 label has been acknowledged"
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert c.flush(timeout=10) is True
    assert c.unacknowledged() == 0
    c.stop()


def test_shared_subscription_handlers_match_the_real_topic():
    assert match_filter("$share/hubs/ate/v1/experts/+/frames/+") == "ate/v1/experts/+/frames/+"
    assert match_filter("ate/v1/nodes/cam1/replies") == "ate/v1/nodes/cam1/replies"
    import pytest

    with pytest.raises(ValueError):
        match_filter("$share//ate/v1/x")


def test_a_refused_subscription_is_reported():
    """A broker that refuses a subscription (aedes and ejabberd refuse $share/... with 0x9E) leaves
    the component unhealthy and says why. Mosquitto grants every subscription, so the SUBACK is
    handed to the client's callback as paho would."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    c = MqttClient(CommonSettings(), "hub", "refused-test")
    c._sub_mids.update({5: "$share/hubs/ate/v1/experts/0/frames", 6: "ate/v1/experts/1/frames"})
    c._on_subscribe(c.client, None, 5, [ReasonCode(PacketTypes.SUBACK, identifier=0x9E)], None)
    c._on_subscribe(c.client, None, 6, [ReasonCode(PacketTypes.SUBACK, identifier=1)], None)
    assert list(c.refused) == ["$share/hubs/ate/v1/experts/0/frames"]
    assert "Shared subscription not supported" in c.refused["$share/hubs/ate/v1/experts/0/frames"]


def test_a_second_client_with_the_same_id_is_reported(broker):
    """Two components on one id (e.g. two hubs on the default id, the host name) kick each other off:
    each says so and turns unhealthy, instead of an endless 'Unspecified error'."""
    import time as _time

    a = MqttClient(CommonSettings(broker=broker.url), "hub", "same")
    b = MqttClient(CommonSettings(broker=broker.url), "hub", "same")
    a.start()
    assert a.wait_connected(10)
    b.start()
    deadline = _time.monotonic() + 15
    while not a.id_conflicts and _time.monotonic() < deadline:
        _time.sleep(0.05)
    assert a.id_conflicts >= 1
    a.stop()
    b.stop()


def test_a_restart_on_the_same_id_is_not_a_conflict(broker):
    """The previous process's retained status and will are older than the new one's start."""
    import time as _time

    first = MqttClient(CommonSettings(broker=broker.url), "edge", "restarted")
    first.start()
    assert first.wait_connected(10) and first.flush(10)
    first.stop()
    second = MqttClient(CommonSettings(broker=broker.url), "edge", "restarted")
    second.start()
    assert second.wait_connected(10) and second.flush(10)
    _time.sleep(1.0)  # the retained status arrives right after the subscription
    assert second.id_conflicts == 0
    second.stop()


def test_a_broker_without_shared_subscriptions_is_reported_at_connect():
    """CONNACK's Shared Subscription Available = 0: the $share subscriptions are reported refused
    (the hub is unhealthy and says why), the plain ones are made."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    c = MqttClient(CommonSettings(), "hub", "noshare")
    c.subscribe("$share/hubs/ate/v1/experts/0/frames/+", lambda m: None)
    c.subscribe("ate/v1/experts/1/frames/+", lambda m: None)
    made = []
    c.client.subscribe = lambda f, qos=0: (made.append(f), (0, len(made)))[1]
    connack = Properties(PacketTypes.CONNACK)
    connack.SharedSubscriptionAvailable = 0
    c._on_connect(c.client, None, None, ReasonCode(PacketTypes.CONNACK, identifier=0), connack)
    assert list(c.refused) == ["$share/hubs/ate/v1/experts/0/frames/+"]
    assert "ate/v1/experts/1/frames/+" in made and not any(f.startswith("$share/") for f in made)


def test_an_unresolvable_broker_name_is_logged_as_such_while_retrying():
    """ATE_BROKER_HOST=agx-orin.local in a bridge-network container: the edge says the name does not
    resolve, with the fix, instead of retrying in silence."""
    from structlog.testing import capture_logs

    settings = CommonSettings(broker="mqtt://no-such-broker.invalid:1883")
    client = MqttClient(settings, "edge", "cam-dns")
    with capture_logs() as logs:
        client.start()
        try:
            end = time.monotonic() + 10
            while not any(e["event"].startswith("mqtt broker host") for e in logs) and time.monotonic() < end:
                time.sleep(0.05)
        finally:
            client.stop()
    said = [e for e in logs if e["event"].startswith("mqtt broker")]
    assert [e["event"] for e in said] == ["mqtt broker host name does not resolve; retrying"]
    assert said[0]["host"] == "no-such-broker.invalid" and "IP address" in said[0]["hint"]
    assert not client.connected.is_set()
