"""Over-the-air updates end to end: real broker, real HTTP downloads, real LiteRT, real state files."""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from device_agent import protocol as P
from device_agent.api import AgentClient
from device_agent.bundle import PrivateKey
from device_agent.config import ProbationSection
from device_agent.home import Home
from fleet.broker import LocalBroker
from tests.support.agent_harness import (
    FAST_PROBATION,
    AgentThread,
    ArtifactServer,
    Watcher,
    flash_device,
    package_tiny,
    send_command,
    send_deploy,
    with_bad_selftest,
)
from tests.support.bundles import Entry, Parts, forge

S = P.DeploymentState
HAPPY_PATH = ["QUEUED", "DOWNLOADING", "VERIFYING", "INSTALLING", "SELFTEST", "PROBATION", "SUCCEEDED"]


@pytest.fixture(scope="module")
def bundles(tiny_models: dict[str, Path], release_key: PrivateKey) -> dict[str, bytes]:
    v1 = package_tiny(tiny_models, release_key, "1.0.0", 1)
    return {
        "v1": v1,
        "v2": package_tiny(tiny_models, release_key, "2.0.0", 2),
        "bad-selftest": with_bad_selftest(v1, release_key, "3.0.0", 3),
    }


@pytest.fixture
def device(
    tmp_path: Path, broker: LocalBroker, bundles: dict[str, bytes], key_files: tuple[Path, Path]
) -> Iterator[tuple[Home, AgentThread, Watcher]]:
    home = flash_device(tmp_path, bundles["v1"], broker.url, key_files[1])
    watcher = Watcher(broker.url)
    agent = AgentThread(home)
    agent.wait_connected()
    yield home, agent, watcher
    agent.stop()
    watcher.close()


def deploy(broker: LocalBroker, server: ArtifactServer, data: bytes, name: str = "b.efb") -> str:
    url, sha, size = server.publish(name, data)
    return send_deploy(broker.url, "test", "dev-1", url, sha, size)


def serving_version(agent: AgentThread) -> str:
    assert agent.agent.api is not None
    x = np.zeros((1, 8, 8, 1), np.float32)
    return str(AgentClient(agent.agent.api.url).predict({"image": x})["model"]["version"])


def test_update_commits_after_probation_and_serves_the_new_model(device, broker, server, bundles) -> None:
    home, agent, watcher = device
    dep = deploy(broker, server, bundles["v2"])
    watcher.wait_event(dep, {S.SUCCEEDED})
    assert watcher.states(dep) == HAPPY_PATH
    state = home.load_state()
    assert (state.active, state.previous, state.committed, state.probation) == ("b", "a", {"digits": 2}, None)
    assert serving_version(agent) == "2.0.0"
    assert agent.agent.info().model.version == "2.0.0"  # type: ignore[union-attr]
    assert not list(home.downloads.iterdir())  # the download was cleaned up


def test_failed_selftest_rolls_back_and_the_old_model_keeps_serving(device, broker, server, bundles) -> None:
    home, agent, watcher = device
    dep = deploy(broker, server, bundles["bad-selftest"])
    ev = watcher.wait_event(dep, {S.ROLLED_BACK, S.SUCCEEDED, S.FAILED})
    assert (ev.state, ev.reason) == (S.ROLLED_BACK, "selftest")
    assert "top-1 agreement 0.00" in ev.detail
    assert "PROBATION" not in watcher.states(dep)
    assert home.load_state().active == "a"
    assert home.load_state().previous is None  # slot b holds the refused bundle: never a rollback target
    assert serving_version(agent) == "1.0.0"


def test_failed_probation_rolls_back(tmp_path, broker, server, bundles, key_files) -> None:
    slow = replace(FAST_PROBATION, latency_budget_ms=0.0001)  # no real model answers in 0.1 µs
    home = flash_device(tmp_path, bundles["v1"], broker.url, key_files[1], probation=slow)
    watcher = Watcher(broker.url)
    agent = AgentThread(home)
    try:
        agent.wait_connected()
        dep = deploy(broker, server, bundles["v2"])
        ev = watcher.wait_event(dep, {S.ROLLED_BACK, S.SUCCEEDED})
        assert (ev.state, ev.reason) == (S.ROLLED_BACK, "probation-latency")
        assert watcher.states(dep)[-2:] == ["PROBATION", "ROLLED_BACK"]
        state = home.load_state()
        assert (state.active, state.committed) == ("a", {"digits": 1})
        assert serving_version(agent) == "1.0.0"
    finally:
        agent.stop()
        watcher.close()


def test_rollback_command_reactivates_the_previous_slot(device, broker, server, bundles) -> None:
    home, agent, watcher = device
    dep = deploy(broker, server, bundles["v2"])
    watcher.wait_event(dep, {S.SUCCEEDED})
    send_command(broker.url, "test", "dev-1", P.RollbackCommand("req-rb-1", dep, "operator"))
    watcher.wait_event(dep, {S.ROLLED_BACK})
    assert home.load_state().active == "a"
    assert serving_version(agent) == "1.0.0"


def test_each_deployment_id_is_acted_on_once(device, broker, server, bundles) -> None:
    _, _, watcher = device
    url, sha, size = server.publish("b.efb", bundles["v2"])
    cmd = P.DeployCommand("req-a", "dep-once", url, sha, size)
    send_command(broker.url, "test", "dev-1", cmd)
    watcher.wait_event("dep-once", {S.SUCCEEDED})
    send_command(broker.url, "test", "dev-1", replace(cmd, request_id="req-b"))
    watcher.wait(lambda: any(e.reason == "duplicate" for e in watcher.events))
    assert watcher.states("dep-once").count("QUEUED") == 1
    assert len([r for r in server.requests if r[0] == "/b.efb"]) == 1


def test_download_resumes_with_range_after_a_broken_connection(device, broker, server, bundles) -> None:
    _, _, watcher = device
    server.drop_after = 3000
    dep = deploy(broker, server, bundles["v2"])
    watcher.wait_event(dep, {S.SUCCEEDED})
    assert ("/b.efb", "bytes=3000-") in server.requests


def test_a_restart_during_probation_resumes_it(tmp_path, broker, server, bundles, key_files) -> None:
    slow_commit = ProbationSection(min_inferences=10**6, seconds=4.0, max_latency_ratio=0.0)
    home = flash_device(tmp_path, bundles["v1"], broker.url, key_files[1], probation=slow_commit)
    watcher = Watcher(broker.url)
    agent = AgentThread(home)
    agent.wait_connected()
    dep = deploy(broker, server, bundles["v2"])
    watcher.wait_event(dep, {S.PROBATION})
    agent.stop()
    assert home.load_state().probation is not None
    agent = AgentThread(home)
    try:
        assert agent.agent.updater.state.probation.boots == 1  # type: ignore[union-attr]
        assert agent.agent.engine.model.manifest.version == "2.0.0"  # type: ignore[union-attr]
        watcher.wait_event(dep, {S.SUCCEEDED}, timeout=30)
        assert home.load_state().committed == {"digits": 2}
    finally:
        agent.stop()
        watcher.close()


def _refusals(parts: Parts, key: PrivateKey, committed: Parts) -> dict[str, bytes]:
    """One forged bundle per refusal reason, built from a bundle the device would otherwise accept."""
    stranger = PrivateKey.generate()
    flipped = bytearray(parts.files["model/model.tflite"])
    flipped[len(flipped) // 2] ^= 0x01
    schema = Parts(dict(parts.manifest, sequence="ten"), parts.files)
    future = Parts(dict(parts.manifest, format="edgefleet-bundle/9", sequence=11), parts.files)
    arm_only = Parts(
        dict(parts.manifest, sequence=12, requirements=dict(parts.manifest["requirements"], architectures=["armv6l"])),
        parts.files,
    )
    tampered = Parts(dict(parts.manifest, sequence=13), parts.files, parts.signatures)
    return {
        "hash-mismatch": forge(parts, replace={"model/model.tflite": bytes(flipped)}),
        "unexpected-file": forge(parts, extra=[Entry("extra.bin", b"x")]),
        "path-traversal": forge(parts, extra=[Entry("../../evil", b"x")]),
        "absolute-path": forge(parts, extra=[Entry("/etc/evil", b"x")]),
        "symlink": forge(parts, extra=[Entry("model/link", b"/etc/shadow", mode=stat.S_IFLNK | 0o777)]),
        "duplicate-entry": forge(parts, extra=[Entry("labels.txt", b"evil")]),
        "zip-bomb": forge(parts, extra=[Entry("bomb", b"\0" * (4 << 20), compress=zipfile.ZIP_DEFLATED)]),
        "unknown-key": forge(parts, sign_with=[stranger]),
        "bad-signature": forge(tampered),
        "missing-signature": forge(Parts(parts.manifest, parts.files, [])),
        "bad-manifest": forge(schema, sign_with=[key]),
        "unsupported-format": forge(future, sign_with=[key]),
        "downgrade": forge(committed),  # sequence 1 == the committed one
        "requirements": forge(arm_only, sign_with=[key]),
    }


def test_every_refusal_class_through_cmd_deploy_ends_rejected(device, broker, server, bundles, release_key) -> None:
    home, agent, watcher = device
    cases = _refusals(Parts.of(bundles["v2"]), release_key, Parts.of(bundles["v1"]))
    for reason, data in cases.items():  # one at a time: a second deploy while one is pending is "busy"
        dep = deploy(broker, server, data, f"{reason}.efb")
        ev = watcher.wait_event(dep, {S.REJECTED, S.FAILED, S.SUCCEEDED, S.ROLLED_BACK})
        assert (ev.state, ev.reason) == (S.REJECTED, reason), ev.detail
    state = home.load_state()
    assert (state.active, state.committed, state.pending) == ("a", {"digits": 1}, None)
    assert serving_version(agent) == "1.0.0"
    assert not home.slot("b").exists()  # nothing refused was ever installed


def test_a_rollback_during_a_deployment_cancels_it_before_activation(device, broker, server, bundles) -> None:
    home, agent, watcher = device
    server.throttle_bps = 16_000  # the download takes about a second
    dep = deploy(broker, server, bundles["v2"])
    watcher.wait_event(dep, {S.DOWNLOADING})
    send_command(broker.url, "test", "dev-1", P.RollbackCommand("req-cancel", dep, "gate tripped"))
    ev = watcher.wait_event(dep, {S.ROLLED_BACK, S.SUCCEEDED, S.FAILED})
    assert (ev.state, ev.reason) == (S.ROLLED_BACK, "cancelled")
    assert "PROBATION" not in watcher.states(dep)
    state = home.load_state()
    assert (state.active, state.pending, state.committed) == ("a", None, {"digits": 1})
    assert serving_version(agent) == "1.0.0"
