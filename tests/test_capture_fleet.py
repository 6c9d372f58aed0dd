"""Capture on the fleet manager, over a real broker and real HTTP: a policy for one sku reaches exactly
those devices (retained cmd/capture with a per-device upload token), uploads are authorized per device,
idempotent and audited, and ls / export / label / purge work through fleetctl."""

from __future__ import annotations

import csv
import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_agent import protocol as P
from device_agent.bundle import PrivateKey, TrustStore
from device_agent.capture.policy import CapturePolicy
from device_agent.capture.sampler import Sampler
from device_agent.capture.store import CaptureStore
from device_agent.capture.upload import Uploader
from device_agent.engine import InferenceEngine
from device_agent.model import LoadedModel
from device_agent.mqtt import MqttClient, MqttConfig
from fleet.broker import LocalBroker
from fleet.capture.policy import upload_token
from fleet.cli import cli
from fleet.store.captures import CaptureQuery
from tests.support.agent_harness import package_tiny
from tests.support.fleet_harness import TOKEN, Harness, running_fleet, wait_until
from toolchain.evaluate import labels_from
from toolchain.fielddata import field_data
from toolchain.npzio import feeds_for, load_arrays

FLEET = "f"
DEVICES = {"dev-a": "a", "dev-b1": "b", "dev-b2": "b"}


@pytest.fixture
def fleet(broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path]) -> Iterator[Harness]:
    with running_fleet(broker.url, tmp_path / "fm", key_files[1], fleet=FLEET) as h:
        model = P.ModelRef("digits", "1.0.0", 1, "0" * 64)
        for device, sku in DEVICES.items():
            info = P.Info("0.1.0", "tflite", "2.0", sku, "x86_64", 1 << 30, model=model)
            h.server.store.devices.record_info(FLEET, device, info, time.time())
        yield h


def fleetctl(h: Harness, *args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(cli, ["--server", h.url, "--token", TOKEN, *args])
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def _samples(tmp: Path, model: LoadedModel, n: int) -> CaptureStore:
    store = CaptureStore(tmp, 1 << 22, 1000)
    sampler = Sampler(store, {"fleet": FLEET, "device": "dev-b1"})
    sampler.set_policy(CapturePolicy("p1", random=1.0, max_per_hour=10_000))
    engine = InferenceEngine(model)
    engine.capture = sampler
    inputs, _ = model.selftest_samples()
    for i in range(n):
        engine.predict({k: v[i % len(v) : i % len(v) + 1] for k, v in inputs.items()})
    sampler.drain()
    assert len(store) == n
    return store


def _enable(h: Harness) -> None:
    out = fleetctl(
        h,
        "capture",
        "enable",
        "--selector",
        "sku=b",
        "--rule",
        "low-confidence:0.6",
        "--rule",
        "drift",
        "--rule",
        "random:0.001",
        "--per-class-max",
        "50",
        "--max-mb",
        "20",
        "--max-per-hour",
        "120",
        "--until",
        "7d",
    )
    assert "enabled for sku=b" in out


def _policy(h: Harness, device: str) -> CapturePolicy:
    sku = DEVICES[device]
    policy = h.server.service.capture.policies.device_policy(device, sku, [], time.time())  # type: ignore[union-attr]
    assert policy is not None
    return policy


@pytest.fixture
def model(tiny_models: dict[str, Path], release_key: PrivateKey) -> LoadedModel:
    data = package_tiny(tiny_models, release_key, "1.0.0", 1)
    return LoadedModel.load(data, TrustStore.of([release_key.public_key]), slot="a")


def _retained(broker: LocalBroker, topic: str) -> bytes | None:
    """The retained message on ``topic``: a fresh subscriber gets it before a marker published after subscribing
    (evidence, not a wait)."""
    client = MqttClient(MqttConfig(url=broker.url, client_id="retained-probe", clean_start=True))
    client.connect()
    try:
        client.subscribe([(topic, 1), ("test/marker", 1)])
        client.publish("test/marker", b"m", qos=1)
        while True:
            msg = client.messages.get(timeout=30)
            if msg.topic == topic:
                return msg.payload
            if msg.topic == "test/marker":
                return None
    finally:
        client.disconnect()


def test_a_policy_for_one_sku_reaches_exactly_its_devices(fleet: Harness, broker: LocalBroker) -> None:
    h = fleet
    watcher = MqttClient(MqttConfig(url=broker.url, client_id="watcher", clean_start=True))
    watcher.connect()
    watcher.subscribe([(P.subscription(FLEET, P.CMD_CAPTURE), 1)])
    _enable(h)
    got: dict[str, P.CaptureCommand] = {}

    def receive() -> bool:
        try:
            msg = watcher.messages.get(timeout=0.2)
        except queue.Empty:
            return False
        cmd = P.parse_command(P.CMD_CAPTURE, msg.payload)
        assert isinstance(cmd, P.CaptureCommand)
        got[P.parse_topic(msg.topic).device] = cmd
        return set(got) == {"dev-b1", "dev-b2"}

    wait_until(receive, 30, "cmd/capture for both sku-b devices")
    watcher.disconnect()
    assert _retained(broker, P.topic(FLEET, "dev-a", P.CMD_CAPTURE)) is None  # sku a holds no policy
    assert _retained(broker, P.topic(FLEET, "dev-b2", P.CMD_CAPTURE)) is not None
    policy = got["dev-b1"].policy
    assert policy is not None and policy.enabled and policy.low_confidence == 0.6 and policy.per_class_max == 50
    assert policy.upload_url == f"{h.url}/api/v1/capture/upload" and policy.until is not None
    key = h.server.service.capture.policies.key  # type: ignore[union-attr]
    assert policy.token == upload_token(key, FLEET, "dev-b1") != got["dev-b2"].policy.token  # type: ignore[union-attr]
    shown = h.api.get("/devices/dev-b1")["capture"]
    assert shown["id"] == policy.id and "token" not in shown and h.api.get("/devices/dev-a")["capture"] is None
    assert "sku=b" in fleetctl(h, "capture", "status")
    assert "disabled policies: [1]" in fleetctl(h, "capture", "disable", "--selector", "sku=b")
    off = h.server.service.capture.policies.device_policy("dev-b1", "b", [], time.time())  # type: ignore[union-attr]
    assert off is not None and not off.enabled  # a device that had it gets it back disabled


def test_uploads_are_authorized_per_device_idempotent_and_audited(
    fleet: Harness, tmp_path: Path, model: LoadedModel
) -> None:
    h = fleet
    _enable(h)
    policy, other = _policy(h, "dev-b1"), _policy(h, "dev-b2")
    assert policy.upload_url and policy.token and other.token
    store = _samples(tmp_path / "dev", model, 6)
    kept = dict(store.oldest(100, 1 << 30))
    wrong = Uploader(store, f"{FLEET}/dev-b1").upload_once(policy.upload_url, other.token, 32)
    assert wrong.error == "HTTP 401" and len(store) == 6  # another device's token: refused, nothing deleted
    refusals = [a for a in h.api.get("/audit") if a["action"] == "capture.upload" and a["actor"] == f"{FLEET}/dev-b1"]
    assert refusals, "a refused upload is audited"
    assert Uploader(store, "other/dev-b1").upload_once(policy.upload_url, policy.token, 32).error == "HTTP 401"
    up = Uploader(store, f"{FLEET}/dev-b1")
    result = up.upload_once(policy.upload_url, policy.token, 4)
    assert (result.confirmed, len(store)) == (4, 2)  # confirmed ones leave the device, the rest wait
    assert up.upload_once(policy.upload_url, policy.token, 4).confirmed == 2 and len(store) == 0
    for name, blob in kept.items():  # the answer was lost: the device sends them again
        store.add(name, blob)
    again = up.upload_once(policy.upload_url, policy.token, 32)
    assert again.confirmed == 6 and len(store) == 0
    rows = json.loads(fleetctl(h, "capture", "ls", "--json"))
    assert len(rows) == 6 and {r["device"] for r in rows} == {"dev-b1"} and {r["sku"] for r in rows} == {"b"}
    assert {r["reason"] for r in rows} == {"random"} and all(r["model_name"] == "digits" for r in rows)


def test_export_label_and_purge_through_fleetctl(fleet: Harness, tmp_path: Path, model: LoadedModel) -> None:
    h = fleet
    _enable(h)
    policy = _policy(h, "dev-b1")
    store = _samples(tmp_path / "dev", model, 6)
    assert (
        Uploader(store, f"{FLEET}/dev-b1").upload_once(policy.upload_url or "", policy.token or "", 32).confirmed == 6
    )
    rows = json.loads(fleetctl(h, "capture", "ls", "--json"))
    field = tmp_path / "field.npz"
    fleetctl(h, "capture", "export", "-o", str(field), "--model", "digits@1.0.0")
    arrays = load_arrays(field)
    feeds = feeds_for(arrays, model.manifest.inputs, str(field))
    assert len(next(iter(feeds.values()))) == 6 and arrays["y"].tolist() == [-1] * 6
    prov = field_data(field)
    assert prov is not None and prov["count"] == 6 and prov["query"] == {"model": "digits@1.0.0"}

    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["device", "id", "label"])
        w.writerows([["dev-b1", r["id"], "3"] for r in rows[:2]])
    assert "labelled 2 of 2" in fleetctl(h, "capture", "label", "--csv", str(labels))
    fleetctl(h, "capture", "export", "-o", str(tmp_path / "labelled.npz"), "--labelled-only")
    assert load_arrays(tmp_path / "labelled.npz")["y"].tolist() == [3, 3]
    assert labels_from(field, 6) is None  # -1 placeholders: edgetool evaluate measures no accuracy on them
    assert labels_from(tmp_path / "labelled.npz", 2).tolist() == [3, 3]  # type: ignore[union-attr]

    assert "purged 6" in fleetctl(h, "capture", "purge", "--device", "dev-b1", "--yes")
    assert json.loads(fleetctl(h, "capture", "ls", "--json")) == []
    assert not list((tmp_path / "fm" / "artifacts" / "captures" / "dev-b1").glob("*.sample"))
    actions = {a["action"] for a in h.api.get("/audit")}
    assert {"capture.enable", "capture.upload", "capture.export", "capture.label", "capture.purge"} <= actions
    assert "not enough" not in fleetctl(h, "capture", "purge", "--yes", ok=False)  # a query is required


def test_retention_drops_the_oldest_by_age_and_by_bytes(fleet: Harness, tmp_path: Path, model: LoadedModel) -> None:
    h = fleet
    _enable(h)
    policy = _policy(h, "dev-b1")
    store = _samples(tmp_path / "dev", model, 6)
    assert (
        Uploader(store, f"{FLEET}/dev-b1").upload_once(policy.upload_url or "", policy.token or "", 32).confirmed == 6
    )
    samples = h.server.service.capture.samples  # type: ignore[union-attr]
    rows = samples.find(CaptureQuery())
    keep_bytes = sum(r.size for r in rows[-2:])
    assert samples.enforce_retention(None, keep_bytes, time.time()) == 4
    assert [r.id for r in samples.find(CaptureQuery())] == [r.id for r in rows[-2:]]  # the newest stay
    assert samples.enforce_retention(3600.0, None, rows[-1].ts + 3600.5) == 2
    assert samples.find(CaptureQuery()) == [] and not any(Path(r.path).exists() for r in rows)
    assert [a["action"] for a in h.api.get("/audit")].count("capture.retention") == 2
