"""The edgetool verbs exactly as the issue writes them, driven through click's CliRunner."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_agent.bundle import read_bundle
from tests.support.bundles import Entry, Parts, forge
from toolchain.cli import cli


def run(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(cli, list(args))
    if ok:
        assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    run("keygen", "--out", str(tmp_path / "keys" / "release"))
    return tmp_path / "keys" / "release.key", tmp_path / "keys" / "release.pub"


@pytest.fixture
def packaged(tmp_path: Path, keys: tuple[Path, Path], tiny_models: dict[str, Path]) -> Path:
    out = tmp_path / "digits-1.0.0.efb"
    release = ["--name", "digits", "--version", "1.0.0", "--sequence", "1", "--key", str(keys[0])]
    data = ["--labels", str(tiny_models["labels"]), "--calibration", str(tiny_models["calibration"])]
    run("package", str(tiny_models["tflite"]), *release, *data, "-o", str(out))
    return out


def test_keygen_writes_a_0600_private_key_and_refuses_to_overwrite(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    assert keys[1].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    result = CliRunner().invoke(cli, ["keygen", "--out", str(tmp_path / "keys" / "release")])
    assert result.exit_code == 1
    assert "already exists" in result.output


def test_package_then_verify(packaged: Path, keys: tuple[Path, Path]) -> None:
    out = run("verify", str(packaged), "--trust", str(keys[1]))
    assert out.startswith("OK digits 1.0.0 (sequence 1)")
    manifest = read_bundle(packaged.read_bytes()).manifest
    assert manifest.runtime.name == "tflite"
    assert [t.name for t in manifest.inputs] == ["image"]
    assert manifest.inputs[0].shape == (-1, 8, 8, 1)
    assert manifest.postprocess.kind == "classification"
    assert manifest.drift == "drift.json"
    assert manifest.provenance["calibration_sha256"]


def test_packaging_the_same_inputs_twice_gives_identical_bytes(
    tmp_path: Path, keys: tuple[Path, Path], tiny_models: dict[str, Path]
) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"b{i}.efb"
        release = ["--name", "digits", "--version", "2.0.0", "--sequence", "2", "--key", str(keys[0])]
        calibration = ["--calibration", str(tiny_models["calibration"])]
        run("package", str(tiny_models["onnx"]), *release, *calibration, "-o", str(out))
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_package_onnx_reads_tensors_from_onnxruntime(
    tmp_path: Path, keys: tuple[Path, Path], tiny_models: dict[str, Path]
) -> None:
    out = tmp_path / "o.efb"
    release = ["--name", "digits-onnx", "--version", "1.0.0", "--sequence", "1", "--key", str(keys[0])]
    run("package", str(tiny_models["onnx"]), *release, "-o", str(out))
    m = read_bundle(out.read_bytes()).manifest
    assert (m.runtime.name, m.inputs[0].name, m.outputs[0].shape) == ("onnx", "image", (-1, 10))


def test_sign_adds_a_second_signature_for_a_threshold(tmp_path: Path, packaged: Path, keys: tuple[Path, Path]) -> None:
    run("keygen", "--out", str(tmp_path / "keys" / "ops"))
    two = tmp_path / "two.efb"
    trust = ["--trust", str(keys[1]), "--trust", str(tmp_path / "keys" / "ops.pub")]
    assert "threshold" in run("verify", str(packaged), *trust, "--threshold", "2", ok=False)
    run("sign", str(packaged), "--key", str(tmp_path / "keys" / "ops.key"), "-o", str(two))
    assert run("verify", str(two), *trust, "--threshold", "2").startswith("OK")


def test_verify_refusals_are_one_line_and_exit_1(tmp_path: Path, packaged: Path, keys: tuple[Path, Path]) -> None:
    bad = tmp_path / "bad.efb"
    bad.write_bytes(forge(Parts.of(packaged.read_bytes()), extra=[Entry("extra.txt", b"x")]))
    result = CliRunner().invoke(cli, ["verify", str(bad), "--trust", str(keys[1])])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "[unexpected-file]" in result.output
    result = CliRunner().invoke(cli, ["verify", str(packaged), "--trust", str(keys[1]), "--committed-sequence", "1"])
    assert result.exit_code == 1
    assert "[downgrade]" in result.output


def test_verify_json(tmp_path: Path, packaged: Path, keys: tuple[Path, Path]) -> None:
    doc = json.loads(run("verify", str(packaged), "--trust", str(keys[1]), "--json"))
    assert doc["ok"] is True and doc["sequence"] == 1
    other = tmp_path / "other"
    run("keygen", "--out", str(other))
    result = CliRunner().invoke(cli, ["verify", str(packaged), "--trust", f"{other}.pub", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["reason"] == "unknown-key"


def test_inspect_human_and_json(packaged: Path, keys: tuple[Path, Path]) -> None:
    text = run("inspect", str(packaged))
    assert "digits 1.0.0 (sequence 1" in text
    assert "image float32[-1, 8, 8, 1]" in text
    assert "not verified" in text
    doc = json.loads(run("inspect", str(packaged), "--json", "--trust", str(keys[1])))
    assert doc["manifest"]["name"] == "digits"
    assert doc["verified_by"] == doc["signatures"]


def test_bad_inputs_give_one_clear_line(tmp_path: Path, keys: tuple[Path, Path], tiny_models: dict[str, Path]) -> None:
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"not a flatbuffer")
    out = run(
        "package", str(bogus), "--name", "x", "--version", "1.0.0", "--sequence", "1", "--key", str(keys[0]), ok=False
    )
    assert "cannot load" in out and "Traceback" not in out
    wrong = tmp_path / "wrong.npz"
    import numpy as np

    np.savez(wrong, x=np.zeros((4, 3, 3), np.float32))
    release = ["--name", "x", "--version", "1.0.0", "--sequence", "1", "--key", str(keys[0])]
    out = run("package", str(tiny_models["tflite"]), *release, "--calibration", str(wrong), ok=False)
    assert "needs samples of shape [8, 8, 1]" in out
    release = ["--name", "Bad_Name", "--version", "1.0.0", "--sequence", "1", "--key", str(keys[0])]
    out = run("package", str(tiny_models["tflite"]), *release, ok=False)
    assert "manifest.name" in out
    out = run("verify", str(tmp_path / "wrong.npz"), "--trust", str(keys[1]), ok=False)
    assert "[bad-archive]" in out or "refused" in out
