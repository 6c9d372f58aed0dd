"""Telemetry over MQTT as dashboards see it, the last will, and the offline spool."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from fleet.broker import LocalBroker, mosquitto_binary, start_mosquitto
from tests.support.agent_harness import AgentThread, Watcher, flash_device, package_tiny

DESIGN_KEYS = {
    "ts",
    "seq",
    "inferences",
    "ips",
    "lat_p50_ms",
    "lat_p95_ms",
    "lat_p99_ms",
    "errors",
    "cpu_pct",
    "rss_mb",
    "disk_free_mb",
    "conf_mean",
    "psi_max",
}
needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def v1(tiny_models: dict[str, Path], release_key: PrivateKey) -> bytes:
    return package_tiny(tiny_models, release_key, "1.0.0", 1)


def start_agent_process(home: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "edge-agent"
    return subprocess.Popen([str(exe), "run", "--home", str(home)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@needs_mosquitto
def test_mosquitto_sub_reads_flat_numeric_telemetry_and_status_goes_offline_on_kill(
    tmp_path, broker, v1, key_files
) -> None:
    home = flash_device(tmp_path, v1, broker.url, key_files[1])
    topic = "edgefleet/v1/test/dev-1/telemetry"
    argv = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", topic, "-C", "3", "-W", "60"]
    sub = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    watcher = Watcher(broker.url)
    agent = start_agent_process(home.root)
    try:
        out, _ = sub.communicate(timeout=90)
        points = [json.loads(line) for line in out.splitlines()]
        assert len(points) == 3
        for point in points:
            assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in point.values()), point
        assert set(points[-1]) >= DESIGN_KEYS, DESIGN_KEYS - set(points[-1])
        assert points[-1]["ips"] > 0 and points[-1]["conf_mean"] > 0.5
        assert [p["seq"] for p in points] == sorted(p["seq"] for p in points)
        watcher.wait(lambda: watcher.status.get("dev-1") == "online")
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        watcher.wait(lambda: watcher.status.get("dev-1") == "offline", timeout=90)  # the broker fires the will
    finally:
        if agent.poll() is None:
            agent.kill()
        watcher.close()


@needs_mosquitto
def test_telemetry_is_spooled_while_the_broker_is_down_and_replayed_in_order(tmp_path, v1, key_files) -> None:
    broker = start_mosquitto(workdir=tmp_path / "broker")
    port = broker.port
    home = flash_device(tmp_path, v1, broker.url, key_files[1], telemetry_interval_s=0.2)
    agent = AgentThread(home, outages=True)
    try:
        agent.wait_connected()
        broker.stop()
        deadline = time.monotonic() + 30
        while len(agent.agent.spool) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        spooled = sorted(json.loads(p.read_bytes())["seq"] for p in home.spool.glob("*.json"))
        assert len(spooled) >= 10, "telemetry was not spooled while the broker was down"
        agent.go_offline(2.0)  # the new broker keeps no sessions: let the watcher subscribe first
        broker = start_mosquitto(port=port, workdir=tmp_path / "broker2")
        watcher = Watcher(broker.url)
        try:
            watcher.wait(lambda: set(spooled) <= {t.seq for _, t in watcher.telemetry}, timeout=60)
        finally:
            watcher.close()
        seqs = [t.seq for _, t in watcher.telemetry if t.seq in set(spooled)]
        assert seqs == sorted(seqs)  # replayed oldest first
        ts = [t.ts for _, t in watcher.telemetry if t.seq in set(spooled)]
        assert max(ts) < time.time() * 1000 - 100  # original timestamps, not the replay time
    finally:
        agent.stop()
        broker.stop()


def test_spool_is_bounded(tmp_path: Path) -> None:
    from device_agent.spool import Spool

    spool = Spool(tmp_path / "spool", max_points=5)
    for i in range(12):
        spool.append(json.dumps({"ts": i, "seq": i}).encode())
    assert (len(spool), spool.dropped) == (5, 7)
    sent: list[int] = []
    spool.replay(lambda payload: sent.append(json.loads(payload)["seq"]))
    assert sent == [7, 8, 9, 10, 11]
    assert len(Spool(tmp_path / "spool", 5)) == 0


def test_malformed_commands_are_ignored_and_the_agent_keeps_serving(
    tmp_path, broker: LocalBroker, v1, key_files
) -> None:
    from device_agent.mqtt import MqttClient, MqttConfig

    home = flash_device(tmp_path, v1, broker.url, key_files[1])
    agent = AgentThread(home)
    watcher = Watcher(broker.url)
    pub = MqttClient(MqttConfig(url=broker.url, client_id="evil", clean_start=True))
    try:
        agent.wait_connected()
        pub.connect()
        for payload in (
            b"{",
            b"[]",
            b'{"request_id": "r"}',
            b"\xff" * 9000,
            json.dumps({"request_id": "r", "url": "file:///x"}).encode(),
        ):
            pub.publish(P.topic("test", "dev-1", P.CMD_DEPLOY), payload, qos=1)
        n = len(watcher.telemetry)
        watcher.wait(lambda: len(watcher.telemetry) > n + 2)
        assert agent.thread.is_alive()
        assert home.load_state().pending is None
        assert not watcher.events
    finally:
        pub.disconnect()
        watcher.close()
        agent.stop()


def test_home_assistant_discovery(tmp_path, broker: LocalBroker, v1, key_files) -> None:
    from device_agent.config import TelemetrySection
    from device_agent.mqtt import MqttClient, MqttConfig

    home = flash_device(
        tmp_path,
        v1,
        broker.url,
        key_files[1],
        sections={"telemetry": TelemetrySection(interval_s=0.5, home_assistant=True)},
    )
    agent = AgentThread(home)
    sub = MqttClient(MqttConfig(url=broker.url, client_id="ha", clean_start=True))
    try:
        agent.wait_connected()
        sub.connect()
        sub.subscribe([("homeassistant/sensor/#", 1)])
        configs = {}
        deadline = time.monotonic() + 10
        while len(configs) < 7 and time.monotonic() < deadline:
            msg = sub.messages.get(timeout=10)
            configs[msg.topic] = json.loads(msg.payload)
        doc = configs["homeassistant/sensor/edgefleet_test_dev-1/ips/config"]
        assert doc["state_topic"] == "edgefleet/v1/test/dev-1/telemetry"
        assert doc["value_template"] == "{{ value_json.ips }}"
    finally:
        sub.disconnect()
        agent.stop()
