"""A device's trust, driven through ``AgentCore`` (no threads, no broker) and the cmd/trust parser:
apply a chain and keep it across a restart, refuse bad chains without changing anything, expiry
(refuse new bundles before downloading, keep serving, recover with a newer version), plain-key devices."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from device_agent import protocol as P
from device_agent.bundle.trust import TRUST_NAME, describe
from device_agent.config import load_config
from device_agent.core import Action, AgentCore
from device_agent.errors import ProtocolError
from device_agent.home import Home
from tests.support.agent_harness import ArtifactServer, package_tiny
from tests.support.trust_chain import TrustRepo
from toolchain import trust as T
from toolchain.flash import FlashOptions, flash


@pytest.fixture
def repo() -> TrustRepo:
    return TrustRepo(now=time.time())


@pytest.fixture
def home(tmp_path: Path, repo: TrustRepo, tiny_models: dict[str, Path]) -> Home:
    v1 = repo.write(tmp_path / "trust")[0]
    bundle = tmp_path / "v1.efb"
    bundle.write_bytes(package_tiny(tiny_models, repo.releases[0], "1.0.0", 1))
    opts = FlashOptions(device_id="dev-1", broker="mqtt://127.0.0.1:1", trust=[], trust_metadata=v1)
    return flash(bundle, tmp_path / "dev", opts)


def booted(home: Home) -> AgentCore:
    core = AgentCore(home, load_config(home.config))
    core.boot()
    return core


def trust_cmd(request_id: str, *docs: bytes) -> P.TrustCommand:
    """Through the wire format, as the device receives it."""
    payload = json.dumps({"request_id": request_id, "chain": [json.loads(d) for d in docs]}).encode()
    cmd = P.parse_command(P.CMD_TRUST, payload)
    assert isinstance(cmd, P.TrustCommand)
    return cmd


def test_a_chain_is_applied_reported_and_kept_across_a_restart(home: Home, repo: TrustRepo) -> None:
    core = booted(home)
    assert core.info().trust_version == 1
    v2, v3 = repo.add_release(1), repo.revoke_release(0)
    assert core.handle_command(trust_cmd("t-3", repo.versions[0], v2, v3)) is Action.PUBLISH_INFO
    info = core.info()
    assert (info.trust_version, info.trust_expired, info.trust_refused) == (3, False, None)
    assert core.updater.trust.revoked == {repo.releases[0].keyid}
    assert core.telemetry_point().values["trust_version"] == 3
    assert core.status()["trust"] == {"version": 3, "expires": describe(repo.current, 0)["expires"], "expired": False}
    assert (home.trust / "retired" / f"{repo.releases[0].keyid}.pub").exists()
    restarted = booted(home)  # the committed model, signed by the revoked key, still boots (installed)
    assert restarted.info().trust_version == 3 and restarted.updater.trust.revoked == {repo.releases[0].keyid}


def test_bad_chains_are_refused_and_change_nothing(home: Home, repo: TrustRepo) -> None:
    core = booted(home)
    held = (home.trust / TRUST_NAME).read_bytes()
    weak = replace(repo.current, version=2, signatures=()).sign(repo.roots[:1]).to_bytes()  # 1 of 2 roots
    cases = {"t-1": (weak, "trust-signature"), "t-2": (repo.versions[0], "trust-version")}
    for request_id, (doc, code) in cases.items():
        assert core.handle_command(trust_cmd(request_id, doc)) is Action.PUBLISH_INFO
        assert core.info().trust_refused == code
    assert (home.trust / TRUST_NAME).read_bytes() == held and core.info().trust_version == 1


def test_expired_trust_refuses_new_bundles_until_a_newer_version(
    home: Home, repo: TrustRepo, tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    core = booted(home)
    core.handle_command(trust_cmd("t-2", repo.update(T.TrustEdit(expires=int(time.time()) - 60))))
    assert core.info().trust_expired is True and core.telemetry_point().values["trust_expired"] == 1
    (tmp_path / "srv").mkdir()
    server = ArtifactServer(tmp_path / "srv")
    try:
        url, sha, size = server.publish("v2.efb", package_tiny(tiny_models, repo.releases[0], "1.1.0", 2))
        core.handle_command(P.DeployCommand("r-1", "dep-1", url, sha, size))
        core.run_deployment()
        last = core.events[-1]
        assert (last.state, last.reason) == (P.DeploymentState.REJECTED, "trust-expired")
        assert server.requests == []  # refused before any download
        assert core.active_engine().model.manifest.version == "1.0.0"  # still serving the committed model
        core.handle_command(trust_cmd("t-3", repo.update(T.TrustEdit(expires=int(time.time()) + 3600))))
        assert core.info().trust_expired is False
        core.handle_command(P.DeployCommand("r-2", "dep-2", url, sha, size))
        core.run_deployment()
        assert P.DeploymentState.PROBATION in [e.state for e in core.events if e.deployment_id == "dep-2"]
    finally:
        server.close()


def test_a_plain_key_device_refuses_trust_updates(tmp_path: Path, repo: TrustRepo, tiny_models, key_files) -> None:
    bundle = tmp_path / "v1.efb"
    from device_agent.bundle import PrivateKey

    bundle.write_bytes(package_tiny(tiny_models, PrivateKey.load(key_files[0]), "1.0.0", 1))
    opts = FlashOptions(device_id="dev-1", broker="mqtt://127.0.0.1:1", trust=[key_files[1]])
    core = booted(flash(bundle, tmp_path / "dev", opts))
    core.handle_command(trust_cmd("t-1", repo.versions[0]))
    info = core.info()
    assert (info.trust_version, info.trust_refused) == (None, "no-trust-metadata")
    assert core.status()["trust"] is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"request_id": "t", "chain": []}, "is empty"),
        ({"request_id": "t", "chain": ["x"]}, "must be a trust document"),
        ({"request_id": "t", "chain": [{}] * 33}, "more than 32"),
        ({"request_id": "t", "chain": [{"pad": "x" * 300_000}]}, "limit"),
    ],
)
def test_cmd_trust_parsing_is_bounded(payload: dict, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        P.parse_command(P.CMD_TRUST, json.dumps(payload).encode())
