"""The lean telemetry reader (fleet/mqtt_stream.py) against a real broker: QoS 0 and QoS 1 publishes,
payloads larger than one read, failover from a dead node, and a refused login as one TransportError."""

from __future__ import annotations

import pytest

from device_agent import protocol as P
from device_agent.errors import TransportError
from device_agent.mqtt import BrokerURL, MqttClient, MqttConfig, parse_brokers
from device_agent.mqtt.client import first_broker
from fleet.broker import LocalBroker, free_port
from fleet.mqtt_stream import TelemetryStream, connect_any, stream_pump
from tests.support.fleet_harness import wait_until

FILTER = [(P.subscription("f", P.TELEMETRY), 1)]


def _read_until(stream: TelemetryStream, count: int) -> list[tuple[str, bytes, int]]:
    got: list[tuple[str, bytes, int]] = []
    wait_until(lambda: got.extend((m.topic, m.payload, m.qos) for m in stream.read()) or len(got) >= count, 30)
    return got


def test_reads_qos0_and_qos1_publishes_in_order(broker: LocalBroker) -> None:
    stream = TelemetryStream(BrokerURL.parse(broker.url), "lean-1")
    stream.connect(FILTER)
    pub = MqttClient(MqttConfig(url=broker.url, client_id="pub-1", clean_start=True))
    pub.connect()
    try:
        big = P.encode(P.Telemetry({"ts": 1, "seq": 1, **{f"k{i}": float(i) for i in range(120)}}))
        sent = [(P.topic("f", f"dev-{i}", P.TELEMETRY), b'{"ts":1,"seq":%d}' % i) for i in range(500)]
        sent.append((P.topic("f", "dev-big", P.TELEMETRY), big))
        pub.publish_many(sent[:250], qos=0)
        pub.publish_many(sent[250:], qos=1)
        got = _read_until(stream, len(sent))
        assert [(t, p) for t, p, _ in got] == sent
        assert {q for _, _, q in got[250:]} == {1}  # acknowledged by the reader, else the broker would resend
    finally:
        pub.disconnect()
        stream.close()


def test_fails_over_to_the_next_node(broker: LocalBroker) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    client_id = next(c for c in (f"lean-{i}" for i in range(20)) if first_broker(c, 2) == 0)
    stream = connect_any(parse_brokers(f"{dead},{broker.url}"), client_id, FILTER)
    assert stream.broker.port == broker.port
    stream.close()


def test_no_node_answering_is_one_error() -> None:
    urls = ",".join(f"mqtt://127.0.0.1:{free_port()}" for _ in range(2))
    with pytest.raises(TransportError, match="cannot reach broker"):
        connect_any(parse_brokers(urls), "lean-x", FILTER)


def test_a_shared_subscription_splits_the_stream(broker: LocalBroker) -> None:
    """``serve --ingest-stream lean`` on an MQTT 5 broker keeps the ``$share`` group (Mosquitto 2 takes
    it from 3.1.1 clients too): two readers in the group get each point once between them."""
    shared = [(f"$share/edgefleet/{P.subscription('f', P.TELEMETRY)}", 0)]
    readers = [TelemetryStream(BrokerURL.parse(broker.url), f"lean-share-{i}") for i in range(2)]
    for reader in readers:
        reader.connect(shared)
    pub = MqttClient(MqttConfig(url=broker.url, client_id="pub-share", clean_start=True))
    pub.connect()
    try:
        pub.publish_many([(P.topic("f", f"d-{i}", P.TELEMETRY), b"%d" % i) for i in range(200)], qos=1)
        got: list[bytes] = []
        wait_until(lambda: got.extend(m.payload for r in readers for m in r.read()) or len(got) >= 200, 30)
        assert sorted(got, key=int) == [b"%d" % i for i in range(200)]
    finally:
        pub.disconnect()
        for reader in readers:
            reader.close()


def test_a_stream_that_keeps_failing_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A broker that keeps refusing (e.g. a ``$share`` filter from a 3.1.1 client) is not retried in silence."""
    dead = parse_brokers(f"mqtt://127.0.0.1:{free_port()}")  # nothing listens there
    tries = [0]

    def connect() -> TelemetryStream:
        tries[0] += 1
        return connect_any(dead, "lean-log", FILTER)

    with caplog.at_level("WARNING", logger="fleet.mqtt_stream"):
        stream_pump(connect, lambda batch: None, lambda: None, lambda: tries[0] >= 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "fleet.mqtt_stream"]
    assert tries[0] == 3 and len(lines) == 1 and "cannot reach broker" in lines[0]
