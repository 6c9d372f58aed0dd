"""``edgetool trust init/update/show``, ``verify --trust-metadata`` and ``flash --trust-metadata``:
real key files (root keys encrypted, the passphrase from a file), real bundles of the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from device_agent.bundle import PrivateKey
from device_agent.bundle.trust import TRUST_NAME, TrustMetadata
from device_agent.home import Home
from tests.support.agent_harness import package_tiny
from tests.support.argv import argv
from toolchain.cli import cli


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Root keys r1..r3 (encrypted at rest) and release keys rel1, rel2 (plain), as files."""
    (tmp_path / "pass").write_text("correct horse\n")
    out = {}
    for name in ("r1", "r2", "r3", "rel1", "rel2"):
        secret = b"correct horse" if name.startswith("r") and not name.startswith("rel") else None
        key_path, pub = PrivateKey.generate().save(tmp_path / "keys" / name, secret)
        out[name], out[name + ".pub"] = key_path, pub
    return out


def run(*words: str | Path, env: dict[str, str] | None = None, **options: object) -> Result:
    return CliRunner().invoke(cli, argv(*words, **options), env=env)


def run_multi(words: list[str | Path], env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, [str(w) for w in words], env=env)


def init_v1(tmp_path: Path, keys: dict[str, Path], env: dict[str, str]) -> Path:
    out = tmp_path / "trust-v1.json"
    words: list[str | Path] = ["trust", "init", "--root-key", keys["r1"], "--root-key", keys["r2"]]
    words += ["--root-key", keys["r3"], "--root-threshold", "2", "--release-key", keys["rel1.pub"], "-o", out]
    result = run_multi(words, env)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"EDGEFLEET_KEY_PASSPHRASE_FILE": str(tmp_path / "pass"), "EDGEFLEET_KEY_PASSPHRASE": ""}


def test_init_show_update_revoke_and_verify(
    tmp_path: Path, keys: dict[str, Path], env: dict[str, str], tiny_models: dict[str, Path]
) -> None:
    v1 = init_v1(tmp_path, keys, env)
    shown = json.loads(run("trust", "show", v1, json=True).output)
    assert shown["version"] == 1 and shown["root_threshold"] == 2 and len(shown["root_keys"]) == 3
    rel1 = PrivateKey.load(keys["rel1"])
    bundle = tmp_path / "digits.efb"
    bundle.write_bytes(package_tiny(tiny_models, rel1, "1.0.0", 1))
    ok = run("verify", bundle, trust_metadata=v1)
    assert ok.exit_code == 0 and rel1.keyid in ok.output

    v2 = tmp_path / "trust-v2.json"
    words: list[str | Path] = ["trust", "update", v1, "--add-release-key", keys["rel2.pub"]]
    words += ["--revoke-release-key", keys["rel1.pub"], "--sign-with", keys["r1"], "--sign-with", keys["r2"], "-o", v2]
    result = run_multi(words, env)
    assert result.exit_code == 0, result.output
    assert "trust version 2" in result.output
    meta = TrustMetadata.parse(v2.read_bytes())
    assert meta.revoked == {rel1.keyid} and rel1.keyid not in meta.release.keys

    refused = run("verify", bundle, trust_metadata=v2, json=True)
    assert refused.exit_code == 1 and json.loads(refused.output)["reason"] == "revoked-key"


def test_update_signed_below_the_root_threshold_is_refused(
    tmp_path: Path, keys: dict[str, Path], env: dict[str, str]
) -> None:
    v1 = init_v1(tmp_path, keys, env)
    out = tmp_path / "v2.json"
    words: list[str | Path] = ["trust", "update", v1, "--release-threshold", "1", "--sign-with", keys["r1"], "-o", out]
    result = run_multi(words, env)
    assert result.exit_code == 1 and "[trust-signature]" in result.output
    assert not out.exists()


def test_root_key_without_the_passphrase_is_one_line_error(tmp_path: Path, keys: dict[str, Path]) -> None:
    out = tmp_path / "t.json"
    result = run(
        "trust",
        "init",
        root_key=keys["r1"],
        release_key=keys["rel1.pub"],
        output=out,
        env={"EDGEFLEET_KEY_PASSPHRASE": "", "EDGEFLEET_KEY_PASSPHRASE_FILE": ""},
    )
    assert result.exit_code == 1 and "[key-file]" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("expires", ["soon", "2001-01-01", "0x5d"])
def test_bad_expiry_is_refused(tmp_path: Path, keys: dict[str, Path], env: dict[str, str], expires: str) -> None:
    out = tmp_path / "t.json"
    result = run(
        "trust", "init", root_key=keys["r1"], release_key=keys["rel1.pub"], expires=expires, output=out, env=env
    )
    assert result.exit_code == 1 and "[trust-edit]" in result.output


def test_revoking_an_unknown_key_and_reviving_a_revoked_one_are_refused(
    tmp_path: Path, keys: dict[str, Path], env: dict[str, str]
) -> None:
    v1 = init_v1(tmp_path, keys, env)
    sign = ["--sign-with", keys["r1"], "--sign-with", keys["r2"]]
    bad = run_multi(["trust", "update", v1, "--revoke-release-key", "0123456789abcdef", *sign, "-o", "x"], env)
    assert bad.exit_code == 1 and "[trust-edit]" in bad.output
    v2 = tmp_path / "v2.json"
    words = ["trust", "update", v1, "--add-release-key", keys["rel2.pub"], "--revoke-release-key", keys["rel1.pub"]]
    assert run_multi([*words, *sign, "-o", v2], env).exit_code == 0
    back = run_multi(["trust", "update", v2, "--add-release-key", keys["rel1.pub"], *sign, "-o", "y"], env)
    assert back.exit_code == 1 and "cannot be trusted again" in back.output


def test_expired_metadata_refuses_bundles(tmp_path: Path, keys: dict[str, Path], tiny_models: dict[str, Path]) -> None:
    root = PrivateKey.load(keys["r1"], b"correct horse")
    rel1 = PrivateKey.load(keys["rel1"])
    from device_agent.bundle.trust import Role

    meta = TrustMetadata(1, 1_000_000, Role.of([root.public_key], 1), Role.of([rel1.public_key], 1)).sign([root])
    path = tmp_path / "old.json"
    path.write_bytes(meta.to_bytes())
    bundle = tmp_path / "digits.efb"
    bundle.write_bytes(package_tiny(tiny_models, rel1, "1.0.0", 1))
    result = run("verify", bundle, trust_metadata=path, json=True)
    assert result.exit_code == 1 and json.loads(result.output)["reason"] == "trust-expired"
    assert "True" in run("trust", "show", path).output


def test_flash_with_trust_metadata_writes_it(
    tmp_path: Path, keys: dict[str, Path], env: dict[str, str], tiny_models: dict[str, Path]
) -> None:
    v1 = init_v1(tmp_path, keys, env)
    bundle = tmp_path / "digits.efb"
    bundle.write_bytes(package_tiny(tiny_models, PrivateKey.load(keys["rel1"]), "1.0.0", 1))
    target = tmp_path / "dev"
    result = run("flash", bundle, target=target, device_id="d1", broker="mqtt://127.0.0.1:1883", trust_metadata=v1)
    assert result.exit_code == 0, result.output
    assert (Home(target).trust / TRUST_NAME).read_bytes() == v1.read_bytes()
    assert not list(Home(target).trust.glob("*.pub"))
    opts = {"target": tmp_path / "d2", "device_id": "d2", "broker": "mqtt://x:1", "trust": keys["rel1.pub"]}
    both = run("flash", bundle, trust_metadata=v1, **opts)
    assert both.exit_code == 1 and "exclude each other" in both.output
