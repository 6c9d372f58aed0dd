"""`fleetctl broker-config` hardening on a real Mosquitto (issue 14), each rule proven both ways: a client id
is its username (a device using the fleet manager's client id takes nothing over), a message size limit,
read-only users that publish nothing. Negative checks are ordered by a sentinel, not timed (see
tests/test_broker_config.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent import protocol as P
from device_agent.errors import TransportError
from device_agent.mqtt import MqttClient, MqttConfig
from fleet.broker import LocalBroker, free_port, mosquitto_binary
from fleet.brokerconfig import BrokerConfigSpec, write
from tests.test_broker_config import received_until, start

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto (.ci/run installs it)")
FLEET = "plant"
MANAGER_ID = f"fleetctl-{FLEET}-main"  # the client id `fleetctl serve` uses
EVENTS = f"{P.PREFIX}/{FLEET}/+/{P.EVENTS}"
LIMIT = 64 << 10  # bytes: a small limit keeps the test light


@pytest.fixture
def hardened(tmp_path: Path) -> Iterator[tuple[LocalBroker, dict[str, str]]]:
    port = free_port()
    spec = BrokerConfigSpec(
        fleet=FLEET, devices=("cam-1", "cam-2"), readers=("grafana",), port=port, run_as="root", message_limit=LIMIT
    )
    creds = write(spec, tmp_path / "mq")
    with start(tmp_path / "mq", port) as b:
        yield b, creds


def client(broker: LocalBroker, creds: dict[str, str], user: str, client_id: str, **kw: object) -> MqttClient:
    config = MqttConfig(url=broker.url, client_id=client_id, username=user, password=creds[user], **kw)  # type: ignore[arg-type]
    c = MqttClient(config)
    c.connect()
    return c


def event(device: str, n: int) -> tuple[str, bytes]:
    payload = P.DeploymentEvent(f"d{n}-{device}", P.DeploymentState.DOWNLOADING, n)
    return P.topic(FLEET, device, P.EVENTS), P.encode(payload)


def test_a_device_with_the_managers_client_id_takes_over_nothing(
    hardened: tuple[LocalBroker, dict[str, str]],
) -> None:
    broker, creds = hardened
    manager = client(broker, creds, "fleetctl", MANAGER_ID, session_expiry_s=600)
    manager.subscribe([(EVENTS, 1)])
    manager.disconnect()  # offline: the broker queues its events in its persistent session
    cam2 = client(broker, creds, "cam-2", "cam-2")
    for n in (1, 2):
        cam2.publish(*event("cam-2", n), qos=1)
    thief = client(broker, creds, "cam-1", MANAGER_ID, session_expiry_s=600)  # the takeover attempt
    manager = client(broker, creds, "fleetctl", MANAGER_ID, session_expiry_s=600)
    try:
        got = [manager.messages.get(timeout=10).payload for _ in range(2)]
        assert got == [event("cam-2", 1)[1], event("cam-2", 2)[1]]  # both queued events kept for the manager
        cam2.publish(*event("cam-2", 3), qos=1)  # and both stay connected: neither kicked the other off
        assert manager.messages.get(timeout=10).payload == event("cam-2", 3)[1]
        assert thief.is_connected and manager.is_connected and thief.messages.empty()
    finally:
        for c in (manager, thief, cam2):
            c.disconnect()


def test_messages_over_the_limit_never_reach_the_manager(hardened: tuple[LocalBroker, dict[str, str]]) -> None:
    broker, creds = hardened
    manager = client(broker, creds, "fleetctl", MANAGER_ID)
    manager.subscribe([(f"{P.PREFIX}/{FLEET}/#", 1)])
    cam1 = client(broker, creds, "cam-1", "cam-1")
    telemetry = P.topic(FLEET, "cam-1", P.TELEMETRY)
    try:
        cam1.publish(telemetry, b"x" * (LIMIT - 100), qos=1)  # under the limit: delivered
        assert len(manager.messages.get(timeout=10).payload) == LIMIT - 100
        with pytest.raises(TransportError):  # over it: the broker drops the client, the message with it
            cam1.publish(telemetry, b"x" * (LIMIT + 2048), qos=1, timeout=10)
        cam1.disconnect()
        cam1 = client(broker, creds, "cam-1", "cam-1")
        sentinel = P.topic(FLEET, "cam-1", P.STATUS)
        cam1.publish(sentinel, b"online", qos=1)
        assert [len(m.payload) for m in received_until(manager, sentinel)] == []
    finally:
        manager.disconnect()
        cam1.disconnect()


def test_a_reader_publishes_nothing_not_even_under_its_own_name(
    hardened: tuple[LocalBroker, dict[str, str]],
) -> None:
    broker, creds = hardened
    manager = client(broker, creds, "fleetctl", MANAGER_ID)
    manager.subscribe([(f"{P.PREFIX}/{FLEET}/#", 1)])
    grafana = client(broker, creds, "grafana", "grafana")
    cam1 = client(broker, creds, "cam-1", "cam-1")
    try:
        grafana.subscribe([(P.topic(FLEET, "cam-1", P.TELEMETRY), 1)])
        for device in ("grafana", "cam-1"):
            for kind in (P.STATUS, P.INFO, P.TELEMETRY, P.EVENTS, P.CMD_DEPLOY):
                grafana.publish(P.topic(FLEET, device, kind), b"online", qos=1, retain=True)
        sentinel = P.topic(FLEET, "cam-1", P.TELEMETRY)
        cam1.publish(sentinel, b'{"ts":1,"seq":1}', qos=1)
        assert [m.topic for m in received_until(manager, sentinel)] == []  # nothing of grafana's arrived
        assert grafana.messages.get(timeout=10).topic == sentinel  # while it still reads what it may
        manager.subscribe([(f"{P.PREFIX}/{FLEET}/+/+", 1)])  # a new subscription gets the retained messages
        again = P.topic(FLEET, "cam-1", P.EVENTS)
        cam1.publish(again, b"{}", qos=1)  # ... before this one
        assert [m.topic for m in received_until(manager, again)] == []  # none of grafana's was retained
    finally:
        for c in (manager, grafana, cam1):
            c.disconnect()
