"""Trust in the field, end to end on a real broker: a leaked release key is revoked fleet-wide with
one ``fleetctl trust push``; every device (one of them offline for two rotations, catching up by
walking the chain) then REJECTS a bundle signed by it with ``revoked-key``, and the fleet manager
refuses it with the same code. Plus the store and the service on their own."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from device_agent import protocol as P
from device_agent.errors import TrustError
from fleet.broker import LocalBroker
from fleet.cli import cli as fleetctl
from fleet.errors import ConflictError
from fleet.store import Store
from tests.support.agent_harness import ArtifactServer, Watcher, flash_device, package_tiny, send_deploy
from tests.support.fleet_harness import TOKEN, Harness, running_fleet, wait_until
from tests.support.powercut import start_agent
from tests.support.trust_chain import TrustRepo
from toolchain import trust as T

DEVICES = ("dev-0", "dev-1", "dev-2")  # dev-2 goes offline for two rotations


def fleetctl_run(h: Harness, *words: str) -> Result:
    return CliRunner().invoke(fleetctl, ["--server", h.url, "--token", TOKEN, *words])


def push(h: Harness, *files: Path) -> Any:
    result = fleetctl_run(h, "trust", "push", *map(str, files))
    assert result.exit_code == 0, result.output
    return result.output


def trust_versions(h: Harness) -> dict[str, Any]:
    return {d["id"]: d["trust_version"] for d in h.api.get("/devices")}


@pytest.fixture
def repo() -> TrustRepo:
    return TrustRepo(now=time.time())


@pytest.fixture
def agents(tmp_path: Path, broker: LocalBroker, repo: TrustRepo, tiny_models: dict[str, Path]) -> Iterator[dict]:
    v1 = repo.write(tmp_path / "trust")[0]
    initial = package_tiny(tiny_models, repo.releases[0], "1.0.0", 1)
    homes = {d: flash_device(tmp_path, initial, broker.url, v1, device_id=d, trust_metadata=v1) for d in DEVICES}
    procs = {d: start_agent(home) for d, home in homes.items()}
    try:
        yield {"homes": homes, "procs": procs, "v1": v1}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)


@pytest.mark.slow
def test_revoking_a_leaked_key_fleet_wide(
    tmp_path: Path, broker: LocalBroker, repo: TrustRepo, agents: dict, tiny_models: dict[str, Path]
) -> None:
    with running_fleet(broker.url, tmp_path / "fm", Path(), fleet="test", trust_metadata=agents["v1"]) as h:
        wait_until(lambda: set(trust_versions(h).values()) == {1} and len(trust_versions(h)) == 3, 60, "3 devices")
        before = tmp_path / "digits-1.0.5.efb"  # released before the leak was known
        before.write_bytes(package_tiny(tiny_models, repo.releases[0], "1.0.5", 5))
        h.api.add_release(before)
        agents["procs"]["dev-2"].send_signal(signal.SIGTERM)
        agents["procs"]["dev-2"].wait(30)
        wait_until(lambda: {d["id"]: d["status"] for d in h.api.get("/devices")}["dev-2"] == "offline", 30, "dev-2 off")

        repo.add_release(1)  # v2: a second release key
        repo.revoke_release(0)  # v3: the first one leaked
        _, v2, v3 = repo.write(tmp_path / "trust")
        assert "trust version 2" in push(h, v2) and "sent to 3 device(s)" in push(h, v3)
        wait_until(lambda: trust_versions(h) == {"dev-0": 3, "dev-1": 3, "dev-2": 1}, 60, "online devices at v3")

        agents["procs"]["dev-2"] = start_agent(agents["homes"]["dev-2"])  # back, two versions behind
        wait_until(lambda: trust_versions(h)["dev-2"] == 3, 60, "dev-2 to walk v2, v3")
        assert h.api.get("/trust")["revoked"] == [repo.releases[0].keyid]

        leaked = tmp_path / "art" / "digits-6.6.6.efb"
        leaked.parent.mkdir()
        leaked.write_bytes(package_tiny(tiny_models, repo.releases[0], "6.6.6", 66))
        refused = fleetctl_run(h, "releases", "add", str(leaked))
        assert refused.exit_code == 1 and "[revoked-key]" in refused.output, refused.output
        checks = h.api.get("/releases/digits@1.0.5/check")
        assert {(c["device"], c["reason"]) for c in checks} == {(d, "revoked-key") for d in DEVICES}

        reasons = _deploy_everywhere(broker.url, leaked)
        assert reasons == dict.fromkeys(DEVICES, ("REJECTED", "revoked-key"))

        good = tmp_path / "digits-1.1.0.efb"
        good.write_bytes(package_tiny(tiny_models, repo.releases[1], "1.1.0", 2))
        assert h.api.add_release(good)["version"] == "1.1.0"


def _deploy_everywhere(broker_url: str, bundle: Path) -> dict[str, tuple[str, str]]:
    """Publish cmd/deploy of ``bundle`` to every device directly (the fleet would not store it)."""
    server = ArtifactServer(bundle.parent)
    watcher = Watcher(broker_url)
    try:
        url, sha, size = server.publish(bundle.name, bundle.read_bytes())
        deps = {d: send_deploy(broker_url, "test", d, url, sha, size) for d in DEVICES}
        final = {P.DeploymentState.REJECTED, P.DeploymentState.FAILED, P.DeploymentState.SUCCEEDED}
        return {d: (ev.state.value, ev.reason) for d, dep in deps.items() if (ev := watcher.wait_event(dep, final))}
    finally:
        watcher.close()
        server.close()


def test_store_keeps_every_version_and_refuses_a_conflicting_one(store_url: str, repo: TrustRepo) -> None:
    store = Store(store_url)
    try:
        repo.add_release(1)
        for i, data in enumerate(repo.versions, start=1):
            assert store.trust.add("f", i, data, 1.0, "alice")
        assert not store.trust.add("f", 2, repo.versions[1], 1.0, "alice")  # the same again: no-op
        with pytest.raises(ConflictError):
            store.trust.add("f", 2, repo.versions[0], 1.0, "alice")
        assert [r.version for r in store.trust.chain("f", 32)] == [1, 2]
        assert [r.version for r in store.trust.chain("f", 1)] == [2]
        assert [a.action for a in store.audit.log("trust/f")] == ["trust.push", "trust.push"]
    finally:
        store.close()


def test_fleet_trust_walks_stored_versions_after_a_restart(tmp_path: Path, repo: TrustRepo) -> None:
    from fleet.trust import FleetTrust

    store = Store.sqlite(tmp_path / "f.db")
    sent: list[list[tuple[str, bytes]]] = []
    ft = FleetTrust.load(store, "f", repo.versions[0], sent.append)
    v2 = repo.add_release(1)
    v3 = repo.revoke_release(0)
    assert ft.push([v2, v3], "alice").version == 3
    assert ft.send(["a", "b"]) == 2
    cmd = P.parse_command(P.CMD_TRUST, sent[0][0][1])
    assert isinstance(cmd, P.TrustCommand) and len(cmd.chain) == 3 and cmd.request_id == "trust-v3"
    with pytest.raises(TrustError) as replay:
        ft.push([v2], "alice")
    assert replay.value.code == "trust-version"
    restarted = FleetTrust.load(store, "f", repo.versions[0])
    assert restarted.metadata.version == 3 and restarted.metadata.revoked == {repo.releases[0].keyid}


def test_a_version_signed_by_too_few_roots_is_refused_by_the_fleet(tmp_path: Path, repo: TrustRepo) -> None:
    from fleet.trust import FleetTrust

    ft = FleetTrust.load(Store.sqlite(tmp_path / "f.db"), "f", repo.versions[0])
    _, weak = T.update(repo.current, T.TrustEdit(release_threshold=1), repo.roots[:2])
    forged = weak.replace(b'"threshold":2', b'"threshold":1', 1)  # lower the root threshold after signing
    with pytest.raises(TrustError) as info:
        ft.push([forged], "mallory")
    assert info.value.code == "trust-signature" and ft.metadata.version == 1


def test_push_to_a_plain_key_fleet_and_a_bad_push_are_one_line_errors(
    tmp_path: Path, broker: LocalBroker, repo: TrustRepo, key_files: tuple[Path, Path]
) -> None:
    v1, v2 = repo.write(tmp_path / "trust")[0], tmp_path / "trust" / "junk.json"
    v2.write_text("{not json")
    with running_fleet(broker.url, tmp_path / "plain", key_files[1], fleet="test") as h:
        plain = fleetctl_run(h, "trust", "push", str(v1))
        assert plain.exit_code == 1 and "--trust-metadata" in plain.output and "Traceback" not in plain.output
    with running_fleet(broker.url, tmp_path / "meta", Path(), fleet="test", trust_metadata=v1) as h:
        junk = fleetctl_run(h, "trust", "push", str(v2))
        assert junk.exit_code == 1 and "[bad-trust]" in junk.output
        replay = fleetctl_run(h, "trust", "push", str(v1))  # the version in force: re-sent, not an error
        assert replay.exit_code == 0 and "trust version 1" in replay.output
        assert fleetctl_run(h, "trust", "show", "--json").output.count('"version": 1') == 1
        assert [(a.action, a.actor) for a in h.server.store.audit.log("trust/test")] == [("trust.push", "serve")]


def test_serve_needs_exactly_one_kind_of_trust(tmp_path: Path, repo: TrustRepo, key_files: tuple[Path, Path]) -> None:
    v1 = repo.write(tmp_path / "trust")[0]
    base = ["serve", "--broker", "mqtt://127.0.0.1:1", "--db", f"sqlite:///{tmp_path / 'f.db'}"]
    base += ["--artifacts", str(tmp_path / "art")]
    for extra, message in (
        ([], "give --trust"),
        (["--trust", str(key_files[1]), "--trust-metadata", str(v1)], "exclude"),
    ):
        result = CliRunner().invoke(fleetctl, [*base, *extra])
        assert result.exit_code == 1 and message in result.output and "[config]" in result.output, result.output
