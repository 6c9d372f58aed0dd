"""Ingest: devices register as they appear; malformed, oversized and misaddressed messages are counted
and dropped without crashing or touching the store; memory stays bounded; MQTT 5 shared subscriptions."""

from __future__ import annotations

import json
import time
from pathlib import Path

from device_agent import protocol as P
from device_agent.mqtt import Message, MqttClient, MqttConfig
from fleet.broker import LocalBroker
from fleet.ingest import Ingest, IngestConfig, subscriptions
from fleet.store import Store
from tests.support.fleet_harness import wait_until

INFO = P.Info("0.1.0", "tflite", "2.16.1", "pi4", "aarch64", 1 << 29, model=P.ModelRef("digits", "1.0.0", 1, "a" * 64))


def msg(topic: str, payload: bytes) -> Message:
    return Message(topic, payload, 0, False)


def point(seq: int, **values: float) -> bytes:
    return P.encode(P.Telemetry({"ts": 1_700_000_000_000 + seq, "seq": seq, **values}))


def test_devices_register_and_rollups_land_in_the_store(store_url: str) -> None:
    store = Store(store_url)
    clock = iter(range(1_700_000_000, 1_700_001_000)).__next__
    ingest = Ingest(store, IngestConfig(fleet="plant"), clock=lambda: float(clock()))
    ingest.handle(msg(P.topic("plant", "cam-1", P.STATUS), b"online"))
    ingest.handle(msg(P.topic("plant", "cam-1", P.INFO), P.encode(INFO)))
    for seq in range(3):
        ingest.handle(
            msg(P.topic("plant", "cam-1", P.TELEMETRY), point(seq, inferences=10, errors=1, lat_p95_ms=5.0 + seq))
        )
    ingest.handle(msg(P.topic("plant", "cam-9", P.TELEMETRY), point(1, inferences=1)))  # telemetry-only device
    assert ingest.flush() == 2
    row = store.devices.get("cam-1")
    assert (row.status, row.sku, row.model_version) == ("online", "pi4", "1.0.0")
    (rollup,) = store.rollups.for_device("cam-1")
    assert (rollup.points, rollup.inferences, rollup.errors, rollup.lat_p95_max) == (3, 30.0, 3.0, 7.0)
    assert store.devices.get("cam-9").status == "unknown"
    health = ingest.health("cam-1")
    assert health is not None and (health.error_rate, health.lat_p95_ms) == (0.1, 7.0)
    assert ingest.received == {"status": 1, "info": 1, "telemetry": 4}
    store.close()


def test_bad_messages_are_counted_and_dropped_and_the_store_is_untouched(store_url: str) -> None:
    store = Store(store_url)
    ingest = Ingest(store, IngestConfig(fleet="plant"))
    ingest.handle(msg(P.topic("plant", "cam-1", P.INFO), P.encode(INFO)))
    before = store.devices.get("cam-1")
    bad = [
        msg(P.topic("plant", "cam-1", P.TELEMETRY), b"{not json"),
        msg(P.topic("plant", "cam-1", P.TELEMETRY), b'{"ts": 1, "seq": 1, "x": "str"}'),
        msg(P.topic("plant", "cam-1", P.TELEMETRY), b'{"ts": 1, "seq": 1, "pad": ' + b"1" * 9000 + b"}"),
        msg(P.topic("plant", "cam-1", P.INFO), b'{"agent_version": 1}'),
        msg(P.topic("plant", "cam-1", P.INFO), json.dumps({"x": "y" * 20_000}).encode()),
        msg(P.topic("plant", "cam-1", P.STATUS), b"maybe"),
        msg(P.topic("plant", "cam-1", P.EVENTS), b'{"deployment_id": "r1-x", "state": "EXPLODED", "ts": 1}'),
        msg(P.topic("plant", "cam-1", P.EVENTS), b'{"deployment_id": "r1-x", "state": "SUCCEEDED", "ts": 1}'),
        msg("edgefleet/v1/plant/CAM 1/telemetry", point(1)),
        msg("edgefleet/v1/plant/cam-1/firmware", b"{}"),
        msg("somebody/else", b"hello"),
        msg(P.topic("other", "cam-1", P.TELEMETRY), point(1)),
        msg(P.topic("plant", "cam-1", P.CMD_DEPLOY), b"{}"),
        msg(P.topic("plant", "cam-1", P.TELEMETRY), b"\xff\xfe\x00"),
    ]
    for m in bad:
        ingest.handle(m)
    assert sum(ingest.dropped.values()) == len(bad)
    assert ingest.dropped["payload-too-large"] == 2
    assert ingest.dropped["bad-topic"] == 3
    assert ingest.dropped["unknown-or-stale-deployment"] == 1
    assert ingest.dropped["other-fleet"] == 1 and ingest.dropped["not-a-device-topic"] == 1
    assert ingest.received == {"info": 1, "events/deployment": 1}
    assert store.devices.get("cam-1") == before
    assert [d.id for d in store.devices.all()] == ["cam-1"]
    store.close()


def test_memory_is_bounded(tmp_path: Path) -> None:
    store = Store.sqlite(tmp_path / "f.db")
    ingest = Ingest(store, IngestConfig(fleet="plant", max_devices=50))
    for i in range(500):
        ingest.handle(msg(P.topic("plant", f"cam-{i}", P.TELEMETRY), point(i, ips=1.0)))
    assert len(ingest) == 50 and ingest.latest("cam-499") is not None and ingest.latest("cam-0") is None
    store.close()


def test_shared_subscription_over_mqtt5_splits_telemetry_between_fleet_managers(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """Two ingest processes in the $share group together see each telemetry point once."""
    clients, ingests = [], []
    for i in range(2):
        c = MqttClient(MqttConfig(url=broker.url, client_id=f"fm-{i}"))
        c.connect()
        c.subscribe(subscriptions("plant", c.protocol_version))
        clients.append(c)
        ingests.append(Ingest(Store.sqlite(tmp_path / f"fm{i}.db"), IngestConfig(fleet="plant")))
    dev = MqttClient(MqttConfig(url=broker.url, client_id="cam-1"))
    dev.connect()
    try:
        shared = clients[0].protocol_version == "5"
        n = 200
        for seq in range(n):
            dev.publish(P.topic("plant", "cam-1", P.TELEMETRY), point(seq, ips=1.0), qos=1)

        def drain() -> int:
            for c, ing in zip(clients, ingests, strict=True):
                while not c.messages.empty():
                    ing.handle(c.messages.get())
            return sum(i.received["telemetry"] for i in ingests)

        wait_until(lambda: drain() >= (n if shared else 2 * n), what="telemetry delivered")
        time.sleep(0.3)
        total = drain()
        if shared:  # mosquitto speaks MQTT 5: each point went to exactly one member of the group
            assert total == n and all(i.received["telemetry"] > 0 for i in ingests)
        else:  # MQTT 3.1.1 (embedded broker): plain subscriptions, each manager sees everything
            assert total == 2 * n
    finally:
        dev.disconnect()
        for c in clients:
            c.disconnect()
