"""``fleetctl serve --ingest-stream lean``: the lean telemetry reader is subscribed before serve starts,
so a point published the moment ``start_background`` returns is ingested (QoS 0: nothing would resend it)."""

from __future__ import annotations

import json
from pathlib import Path

from device_agent import protocol as P
from device_agent.mqtt import MqttClient, MqttConfig
from fleet.broker import LocalBroker
from fleet.server import FleetServer, ServeConfig
from tests.support.fleet_harness import wait_until


def test_telemetry_right_after_start_reaches_the_lean_reader(
    broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    config = ServeConfig(
        db=f"sqlite:///{tmp_path / 'fleet.db'}",
        broker=broker.url,
        artifacts=tmp_path / "artifacts",
        trust=(key_files[1],),
        fleet="f",
        ingest_stream="lean",
    )
    pub = MqttClient(MqttConfig(url=broker.url, client_id="pub-lean-start", clean_start=True))
    pub.connect()
    server = FleetServer(config)
    try:
        server.start_background()
        point = json.dumps({"ts": 1, "seq": 0, "inferences": 5, "errors": 0}).encode()
        pub.publish(P.topic("f", "dev-9", P.TELEMETRY), point, qos=0)
        state = wait_until(lambda: server.ingest.latest("dev-9"), 20, "the point to be ingested")
        assert state.telemetry["inferences"] == 5 and server.ingest.received[P.TELEMETRY] == 1
    finally:
        pub.disconnect()
        server.teardown()
