"""`fleetctl broker-config` on a real Mosquitto: each ACL rule proven both ways.

Negative checks are ordered, not timed: after a forbidden publish we send an allowed "sentinel" on a
path the same subscriber receives; MQTT keeps one publisher's order, so once the sentinel arrives the
forbidden message would already have arrived had the broker let it through.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from device_agent import protocol as P
from device_agent.errors import TransportError
from device_agent.mqtt import Message, MqttClient, MqttConfig
from fleet.broker import LocalBroker, free_port, mosquitto_binary, wait_for_port
from fleet.brokerconfig import BrokerConfigSpec, write
from fleet.cli import cli
from fleet.client import ApiClient
from tests.support.argv import argv
from tests.support.fleet_harness import TOKEN, wait_until

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto (.ci/run installs it)")
FLEET = "plant"
FLEETCTL = str(Path(sys.executable).parent / "fleetctl")


def start(conf_dir: Path, port: int) -> LocalBroker:
    proc = subprocess.Popen(
        [str(mosquitto_binary()), "-c", str(conf_dir / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, 15, proc)
    return LocalBroker("mosquitto", "127.0.0.1", port, proc, conf_dir, conf_dir / "none.log")


@pytest.fixture(params=["mosquitto_passwd", "pbkdf2-fallback"])
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[LocalBroker, dict[str, str]]]:
    port = free_port()
    spec = BrokerConfigSpec(fleet=FLEET, devices=("cam-1", "cam-2"), readers=("grafana",), port=port, run_as="root")
    creds = write(spec, tmp_path / "mq", use_binary=request.param == "mosquitto_passwd")
    with start(tmp_path / "mq", port) as b:
        yield b, creds


def connect(broker: LocalBroker, creds: dict[str, str], user: str, **kw: Any) -> MqttClient:
    password = creds.get(user, "x")
    c = MqttClient(
        MqttConfig(url=broker.url, client_id=f"{user}-c", username=user, password=password, connect_timeout=2, **kw)
    )
    c.connect()
    return c


def received_until(c: MqttClient, sentinel: str) -> list[Message]:
    got = []
    while True:
        try:
            m = c.messages.get(timeout=10)
        except queue.Empty:
            pytest.fail(f"sentinel on {sentinel} never arrived")
        if m.topic == sentinel:
            return got
        got.append(m)


def test_each_acl_rule_both_ways(secured: tuple[LocalBroker, dict[str, str]]) -> None:
    broker, creds = secured
    manager, cam1, cam2 = (connect(broker, creds, u) for u in ("fleetctl", "cam-1", "cam-2"))
    try:
        manager.subscribe([(f"{P.PREFIX}/{FLEET}/#", 1)])
        cam1.subscribe([(f"{P.PREFIX}/{FLEET}/cam-1/cmd/#", 1)])
        cam2.subscribe(
            [
                (f"{P.PREFIX}/{FLEET}/cam-1/cmd/#", 1),
                (f"{P.PREFIX}/{FLEET}/+/telemetry", 1),
                (f"{P.PREFIX}/{FLEET}/cam-2/cmd/#", 1),
            ]
        )
        own = P.topic(FLEET, "cam-1", P.TELEMETRY)
        # a device publishes under its own prefix (allowed) but not under another's (forbidden)
        cam1.publish(P.topic(FLEET, "cam-2", P.TELEMETRY), b'{"ts":1,"seq":1}', qos=1)
        cam1.publish(P.topic(FLEET, "cam-1", P.CMD_DEPLOY), b"{}", qos=1)  # nor commands, even its own
        cam1.publish(own, b'{"ts":1,"seq":2}', qos=1)
        assert [m.topic for m in received_until(manager, own)] == []
        # only the manager publishes commands; a device reads only its own
        cam2.publish(P.topic(FLEET, "cam-1", P.CMD_DEPLOY), b'{"forged":1}', qos=1)
        cmd1 = P.topic(FLEET, "cam-1", P.CMD_PING)
        manager.publish(cmd1, b'{"request_id":"p1"}', qos=1)
        assert [m.topic for m in received_until(cam1, cmd1)] == []  # the forged command never arrived
        cmd2 = P.topic(FLEET, "cam-2", P.CMD_PING)
        manager.publish(cmd2, b'{"request_id":"p2"}', qos=1)
        assert [m.topic for m in received_until(cam2, cmd2)] == []  # cam-2 saw neither cam-1's cmd nor telemetry
    finally:
        for c in (manager, cam1, cam2):
            c.disconnect()


def test_readers_see_telemetry_but_not_commands_and_strangers_are_refused(
    secured: tuple[LocalBroker, dict[str, str]],
) -> None:
    broker, creds = secured
    manager, cam1, grafana = (connect(broker, creds, u) for u in ("fleetctl", "cam-1", "grafana"))
    try:
        grafana.subscribe([(f"{P.PREFIX}/{FLEET}/#", 1)])
        manager.publish(P.topic(FLEET, "cam-1", P.CMD_PING), b'{"request_id":"p1"}', qos=1)
        grafana.publish(P.topic(FLEET, "cam-1", P.CMD_PING), b'{"request_id":"g1"}', qos=1)
        own = P.topic(FLEET, "cam-1", P.TELEMETRY)
        cam1.publish(own, b'{"ts":1,"seq":2}', qos=1)
        assert [m.topic for m in received_until(grafana, own)] == []
        with pytest.raises(TransportError):
            connect(broker, {"cam-1": "wrong"}, "cam-1")
        with pytest.raises(TransportError):
            connect(broker, {}, "intruder")
    finally:
        for c in (manager, cam1, grafana):
            c.disconnect()


def test_tls_listener_with_the_generated_ca(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "tls"
    result = CliRunner().invoke(
        cli, argv("broker-config", out=out, fleet=FLEET, device="cam-1", tls=True, port=port, run_as="root")
    )
    assert result.exit_code == 0, result.output
    creds = dict(line.split() for line in (out / "credentials.txt").read_text().splitlines())
    with start(out, port) as broker:
        url = f"mqtts://127.0.0.1:{port}"
        c = MqttClient(
            MqttConfig(
                url=url, client_id="cam-1", username="cam-1", password=creds["cam-1"], cafile=str(out / "ca.crt")
            )
        )
        c.connect()
        c.publish(P.topic(FLEET, "cam-1", P.STATUS), b"online", qos=1)
        c.disconnect()
        plain = MqttClient(
            MqttConfig(url=broker.url, client_id="x", username="cam-1", password=creds["cam-1"], connect_timeout=1)
        )
        with pytest.raises(TransportError):
            plain.connect()  # no plaintext on a TLS listener


def test_bad_ids_are_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["broker-config", "--out", str(tmp_path), "--device", "Bad Id"])
    assert result.exit_code == 1 and "must be an id" in result.output


def test_fleetctl_serve_on_the_generated_tls_broker_with_its_own_credentials(tmp_path: Path, key_files) -> None:
    """The production wiring of docs/operations.md: broker-config --tls, then `fleetctl serve` over mqtts://
    as the `fleetctl` user, the password from the environment (not the command line), the private CA given
    with --broker-cafile; a device publishing over TLS is registered. A wrong password is one clear error."""
    port, api_port = free_port(), free_port()
    out = tmp_path / "tls"
    result = CliRunner().invoke(
        cli, argv("broker-config", out=out, fleet=FLEET, device="cam-1", tls=True, port=port, run_as="root")
    )
    assert result.exit_code == 0, result.output
    creds = dict(line.split() for line in (out / "credentials.txt").read_text().splitlines())
    args = argv(
        FLEETCTL,
        "serve",
        db=f"sqlite:///{tmp_path / 'fleet.db'}",
        fleet=FLEET,
        broker=f"mqtts://127.0.0.1:{port}",
        broker_username="fleetctl",
        broker_cafile=out / "ca.crt",
        artifacts=tmp_path / "artifacts",
        listen=f"127.0.0.1:{api_port}",
        trust=key_files[1],
        token=f"alice={TOKEN}",
    )
    assert creds["fleetctl"] not in " ".join(args)
    with start(out, port):
        wrong = {**os.environ, "FLEETCTL_BROKER_PASSWORD": "not-the-password"}
        refused = subprocess.run(args, env=wrong, capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr

        env = {**os.environ, "FLEETCTL_BROKER_PASSWORD": creds["fleetctl"]}
        log = (tmp_path / "serve.log").open("wb")
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        api = ApiClient(f"http://127.0.0.1:{api_port}", TOKEN)
        try:
            wait_until(lambda: _answers(api), 30, "fleetctl serve to answer")
            _publish_info_over_tls(port, creds["cam-1"], out / "ca.crt")
            devices = wait_until(lambda: api.get("/devices") or None, 30, "the device to be registered")
            assert [(d["id"], d["model_version"]) for d in devices] == [("cam-1", "1.0.0")]
        finally:
            proc.terminate()
            proc.wait(15)
            log.close()


def _publish_info_over_tls(port: int, password: str, cafile: Path) -> None:
    """cam-1 says who it is over mqtts://, as its own broker user."""
    url = f"mqtts://127.0.0.1:{port}"
    cam = MqttClient(MqttConfig(url=url, client_id="cam-1", username="cam-1", password=password, cafile=str(cafile)))
    cam.connect()
    model = P.ModelRef("digits", "1.0.0", 1, "a" * 64)
    info = P.Info("0.1.0", "tflite", "2.16.1", "pi4", "aarch64", 1 << 29, model=model)
    cam.publish(P.topic(FLEET, "cam-1", P.INFO), P.encode(info), qos=1, retain=True)
    cam.disconnect()


def _answers(api: ApiClient) -> bool:
    try:
        api.get("/devices")
        return True
    except Exception:
        return False
