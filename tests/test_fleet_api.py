"""The HTTP API and fleetctl against a running fleet manager: auth, releases, artifacts with Range,
clear errors for bad input, /metrics, and the CLI's --json output."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from fleet.broker import LocalBroker, free_port
from fleet.cli import cli
from fleet.errors import ApiError
from tests.support.bundles import simple_bundle
from tests.support.fleet_harness import TOKEN, Harness, add_release, running_fleet, wait_until
from tests.support.scripted_device import ScriptedDevice

OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)


@pytest.fixture
def h(broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path], store_url: str) -> Iterator[Harness]:
    with running_fleet(broker.url, tmp_path, key_files[1], db=store_url) as harness:
        yield harness


def fleetctl(h: Harness, *args: str, token: str | None = TOKEN) -> tuple[int, str]:
    env = {"FLEETCTL_SERVER": h.url, **({"FLEETCTL_TOKEN": token} if token else {})}
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_calls_need_a_valid_token(h: Harness, tmp_path: Path, release_key: PrivateKey) -> None:
    bundle = tmp_path / "b.efb"
    bundle.write_bytes(simple_bundle(release_key, version="2.0.0", sequence=2))
    with pytest.raises(ApiError, match="missing bearer token") as missing:
        h.anonymous.add_release(bundle)
    assert missing.value.status_code == 401
    r = httpx.post(f"{h.url}/api/v1/rollouts/1/pause", headers={"Authorization": "Bearer wrong-token"})
    assert (r.status_code, r.json()) == (401, {"error": "invalid token", "code": "unauthorized"})
    code, out = fleetctl(h, "releases", "add", str(bundle), token="wrong-token")
    assert code == 1 and out.strip() == "Error: invalid token (HTTP 401) [unauthorized]"
    assert h.api.get("/releases") == []  # nothing was stored
    with pytest.raises(ApiError, match="missing bearer token"):
        h.anonymous.get("/releases")  # reads need a token too


def test_untrusted_bundle_is_refused_with_its_reason(h: Harness, tmp_path: Path) -> None:
    bundle = tmp_path / "evil.efb"
    bundle.write_bytes(simple_bundle(PrivateKey.generate(), version="6.6.6", sequence=9))
    code, out = fleetctl(h, "releases", "add", str(bundle))
    assert code == 1 and "[unknown-key]" in out and "HTTP 422" in out and len(out.strip().splitlines()) == 1
    assert h.api.get("/releases") == []
    assert not list((h.server.config.artifacts).glob("*.efb"))  # nothing stored on disk either


def test_release_add_list_show_and_artifact_download_with_range(
    h: Harness, tmp_path: Path, release_key: PrivateKey
) -> None:
    data = simple_bundle(release_key, version="2.0.0", sequence=2)
    (tmp_path / "d.efb").write_bytes(data)
    code, out = fleetctl(h, "releases", "add", str(tmp_path / "d.efb"), "--json")
    assert code == 0, out
    row = json.loads(out)
    assert (row["name"], row["version"], row["sha256"]) == ("digits", "2.0.0", hashlib.sha256(data).hexdigest())
    code, out = fleetctl(h, "releases", "add", str(tmp_path / "d.efb"))
    assert code == 1 and "already exists" in out
    code, out = fleetctl(h, "releases", "ls", "--json")
    assert [r["version"] for r in json.loads(out)] == ["2.0.0"]
    code, out = fleetctl(h, "releases", "show", "digits@2.0.0", "--json")
    assert json.loads(out)["manifest"]["sequence"] == 2
    url = f"{h.url}/artifacts/{row['sha256']}.efb"
    assert "artifact" not in row  # no server path in the public shape
    assert httpx.get(url, headers=AUTH).content == data
    part = httpx.get(url, headers={"Range": "bytes=100-", **AUTH})
    assert (part.status_code, part.headers["content-range"]) == (206, f"bytes 100-{len(data) - 1}/{len(data)}")
    assert httpx.get(url, headers={"Range": "bytes=0-99", **AUTH}).content + part.content == data  # resumed
    assert httpx.get(url, headers={"Range": f"bytes={len(data)}-", **AUTH}).status_code == 416
    assert httpx.get(f"{h.url}/artifacts/{'0' * 64}.efb", headers=AUTH).status_code == 404


def test_bad_requests_get_one_clear_line(h: Harness) -> None:
    code, out = fleetctl(h, "rollout", "start", "digits@9.9.9", "--stages", "5,25,100", "--json")
    assert code == 1 and out.strip() == "Error: no release digits@9.9.9 (HTTP 404) [not-found]"
    code, out = fleetctl(h, "rollout", "start", "digits", "--stages", "5,25,100")
    assert code == 1 and "must be NAME@VERSION" in out
    code, out = fleetctl(h, "devices", "show", "ghost")
    assert code == 1 and "no device 'ghost'" in out
    code, out = fleetctl(h, "devices", "tag", "ghost", "--add", "x")
    assert code == 1 and "[not-found]" in out
    code, out = fleetctl(h, "rollout", "status", "42")
    assert code == 1 and "no rollout 42" in out
    assert h.api.get("/devices") == []  # no phantom device was created


def test_a_rollout_that_targets_no_device_is_refused(h: Harness, tmp_path: Path, release_key: PrivateKey) -> None:
    add_release(h, tmp_path, release_key, "2.0.0", 2)
    code, out = fleetctl(h, "rollout", "start", "digits@2.0.0", "--selector", "sku=nope")
    assert code == 1 and "no device matches the selector 'sku=nope'" in out
    code, out = fleetctl(h, "rollout", "start", "digits@2.0.0", "--stages", "5,x")
    assert code == 1 and "'x' is not a count or a percentage" in out
    assert h.api.get("/rollouts") == []


def test_server_unreachable_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["--server", f"http://127.0.0.1:{free_port()}", "devices", "ls"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot reach the fleet manager at http://127.0.0.1:")
    assert len(result.output.strip().splitlines()) == 1


def test_devices_check_rollout_status_and_metrics_through_fleetctl(
    h: Harness, broker: LocalBroker, tmp_path: Path, release_key: PrivateKey
) -> None:
    small = ScriptedDevice(broker.url, "default", "cam-1", "pi4", OLD).start()
    big = ScriptedDevice(broker.url, "default", "cam-2", "jetson", P.ModelRef("digits", "3.0.0", 3, "3" * 64))
    big.start()
    try:
        wait_until(lambda: len([d for d in h.api.get("/devices") if d["sku"]]) == 2, what="devices registered")
        code, out = fleetctl(h, "devices", "ls", "--json")
        assert code == 0 and {d["id"]: d["model_version"] for d in json.loads(out)} == {
            "cam-1": "1.0.0",
            "cam-2": "3.0.0",
        }
        assert fleetctl(h, "devices", "tag", "cam-1", "--add", "canary")[0] == 0
        add_release(h, tmp_path, release_key, "2.0.0", 2)
        code, out = fleetctl(h, "releases", "check", "digits@2.0.0", "--json")
        checks = {c["device"]: c for c in json.loads(out)}
        assert checks["cam-1"]["ok"] and (checks["cam-2"]["ok"], checks["cam-2"]["reason"]) == (False, "downgrade")
        code, out = fleetctl(h, "releases", "check", "digits@2.0.0", "--selector", "tag=canary")
        assert code == 0 and out.strip() == "1 of 1 targeted devices would accept digits@2.0.0"
        code, out = fleetctl(
            h, "rollout", "start", "digits@2.0.0", "--stages", "5,25,100", "--selector", "tag=canary", "--json"
        )
        assert code == 0, out
        rid = json.loads(out)["id"]
        wait_until(
            lambda: json.loads(fleetctl(h, "rollout", "status", str(rid), "--json")[1])["state"] == "SUCCEEDED",
            what="rollout done",
        )
        assert small.model.version == "2.0.0" and big.model.version == "3.0.0"
        metrics = httpx.get(f"{h.url}/metrics", headers=AUTH).text
        assert 'edgefleet_devices{model="digits",sku="pi4",status="online",version="2.0.0"} 1.0' in metrics
        assert 'edgefleet_ingest_messages_total{kind="telemetry"}' in metrics
        assert "edgefleet_ingest_rate" in metrics
        code, out = fleetctl(h, "watch", "--once")
        assert code == 0 and "digits@2.0.0" in out and "SUCCEEDED" in out
    finally:
        small.stop()
        big.stop()


def test_openapi_document(h: Harness) -> None:
    doc = httpx.get(f"{h.url}/openapi.json").json()
    assert {"/api/v1/devices", "/api/v1/releases", "/api/v1/rollouts", "/artifacts/{name}"} <= set(doc["paths"])
    assert httpx.get(f"{h.url}/docs").status_code == 200


def test_garbage_over_mqtt_is_counted_dropped_and_harmless(h: Harness, broker: LocalBroker) -> None:
    """A misbehaving client floods the fleet's topics; the server counts, drops, and keeps working."""
    from device_agent.mqtt import MqttClient, MqttConfig

    dev = ScriptedDevice(broker.url, "default", "cam-1", "pi4", OLD).start()
    rogue = MqttClient(MqttConfig(url=broker.url, client_id="rogue"))
    rogue.connect()
    try:
        wait_until(lambda: [d for d in h.api.get("/devices") if d["sku"]], what="cam-1 registered")
        before = h.api.get("/devices/cam-1")
        for topic, payload in [
            (P.topic("default", "cam-1", P.TELEMETRY), b"\x00" * 9000),  # oversized
            (P.topic("default", "cam-1", P.TELEMETRY), b'{"ts": "soon"}'),
            (P.topic("default", "cam-1", P.INFO), b"[]"),
            (P.topic("default", "cam-1", P.STATUS), b"dead"),
            (P.topic("default", "cam-1", P.EVENTS), b'{"deployment_id": "r7-cam-1", "state": "SUCCEEDED", "ts": 1}'),
            ("edgefleet/v1/default/Not_An_Id/telemetry", b"{}"),
        ]:
            rogue.publish(topic, payload, qos=1)
        dropped = wait_until(
            lambda: (d := h.api.get("/health")["dropped"]) and sum(d.values()) >= 6 and d, what="drops counted"
        )
        assert dropped == {"payload-too-large": 1, "bad-payload": 3, "unknown-or-stale-deployment": 1, "bad-topic": 1}
        after = h.api.get("/devices/cam-1")
        assert {k: after[k] for k in ("sku", "status", "info", "model_version")} == {
            k: before[k] for k in ("sku", "status", "info", "model_version")
        }
        assert [d["id"] for d in h.api.get("/devices")] == ["cam-1"]
        metrics = httpx.get(f"{h.url}/metrics", headers=AUTH).text
        assert 'edgefleet_ingest_dropped_total{reason="payload-too-large"} 1.0' in metrics
    finally:
        rogue.disconnect()
        dev.stop()
