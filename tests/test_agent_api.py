"""The agent's local API, its client, the edge-agent CLI, quantized I/O and hot swap."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from device_agent.api import AgentClient
from device_agent.bundle import PrivateKey, TrustStore
from device_agent.cli import cli
from device_agent.engine import InferenceEngine
from device_agent.errors import InferenceError
from device_agent.errors import LocalApiError as ApiError
from device_agent.home import Home
from device_agent.model import LoadedModel
from fleet.broker import free_port
from tests.support.agent_harness import AgentThread, flash_device, package_tiny
from toolchain.packaging import PackageOptions, package


@pytest.fixture(scope="module")
def eval_data(tiny_models: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(tiny_models["eval"]) as d:
        return d["x"], d["y"]


@pytest.fixture(scope="module")
def v1(tiny_models: dict[str, Path], release_key: PrivateKey) -> bytes:
    return package_tiny(tiny_models, release_key, "1.0.0", 1)


@pytest.fixture(scope="module")
def int8_bundle(tiny_models: dict[str, Path], release_key: PrivateKey) -> bytes:
    opts = PackageOptions(
        name="digits",
        version="1.1.0",
        sequence=2,
        keys=[release_key],
        labels=tiny_models["labels"],
        calibration=tiny_models["calibration"],
    )
    return package(tiny_models["tflite_int8"], opts)


@pytest.fixture
def running(tmp_path, v1, key_files):  # an agent without a reachable broker: the API works offline
    home = flash_device(tmp_path, v1, f"mqtt://127.0.0.1:{free_port()}", key_files[1], replay_rate=0.0)
    agent = AgentThread(home)
    yield home, agent
    agent.stop()


def home_of(running: tuple[Home, AgentThread]) -> Home:
    return running[0]


def test_predict_json_npy_and_npz(running, eval_data) -> None:
    _, agent = running
    url = agent.agent.api.url  # type: ignore[union-attr]
    assert url == f"unix:{home_of(running).api_socket}"  # the default: a Unix socket in the home
    client = AgentClient(url)
    x, y = eval_data
    body = json.dumps({"inputs": {"image": x[:2].tolist()}}).encode()
    doc = client.request("POST", "/v1/predict", body, "application/json")
    assert doc["model"]["version"] == "1.0.0" and len(doc["top1"]) == 2
    assert doc["labels"] == [str(c) for c in doc["top1"]]
    buf = io.BytesIO()
    np.save(buf, x[:5])
    doc = client.request("POST", "/v1/predict", buf.getvalue(), "application/x-npy")
    assert np.mean(np.array(doc["top1"]) == y[:5]) >= 0.8
    assert client.predict({"image": x[:3]})["model"]["slot"] == "a"
    assert client.status()["model"]["name"] == "digits"


def test_bad_requests_get_a_clear_error(running) -> None:
    _, agent = running
    client = AgentClient(agent.agent.api.url)  # type: ignore[union-attr]
    with pytest.raises(ApiError, match=r"expects shape \[-1, 8, 8, 1\]"):
        client.predict({"image": np.zeros((1, 4, 4, 1), np.float32)})
    with pytest.raises(ApiError, match="missing input"):
        client.predict({"a": np.zeros((1, 8, 8, 1), np.float32), "b": np.zeros((1,), np.float32)})
    with pytest.raises(ApiError) as err:
        client.request("POST", "/v1/predict", b"{not json", "application/json")
    assert err.value.status == 400
    assert agent.thread.is_alive()


def test_cli_status_predict_and_rollback(tmp_path, running, eval_data) -> None:
    home, agent = running
    x, _ = eval_data
    np.savez(tmp_path / "in.npz", image=x[:4])
    runner = CliRunner()
    status = json.loads(runner.invoke(cli, ["status", "--home", str(home.root), "--json"]).output)
    assert (status["active_slot"], status["model"]["version"], status["running"]) == ("a", "1.0.0", True)
    assert len(status["model"]["sha256"]) == 64
    out = runner.invoke(cli, ["predict", "--home", str(home.root), str(tmp_path / "in.npz"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["via"] == "agent"
    result = runner.invoke(cli, ["rollback", "--home", str(home.root)])
    assert result.exit_code == 1 and "nothing to roll back to" in result.output
    agent.stop()
    offline = json.loads(
        runner.invoke(cli, ["predict", "--home", str(home.root), str(tmp_path / "in.npz"), "--json"]).output
    )
    assert offline["via"] == "direct" and len(offline["top1"]) == 4
    text = runner.invoke(cli, ["status", "--home", str(home.root)]).output
    assert "active slot a: digits 1.0.0 (sequence 1)" in text and "not running" in text


def test_cli_errors_are_one_line(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["status", "--home", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "state.json not found" in result.output and "Traceback" not in result.output


def test_quantized_io_is_handled_for_float_callers(int8_bundle, eval_data, release_key) -> None:
    model = LoadedModel.load(int8_bundle, TrustStore.of([release_key.public_key]), slot="b")
    assert model.manifest.inputs[0].dtype == "int8" and model.manifest.inputs[0].quantization
    x, y = eval_data
    out = model.predict({"image": x})["probs"]
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert (out.argmax(axis=1) == y).mean() > 0.9
    raw = model.predict({"image": x[:3]}, raw=True)["probs"]
    assert raw.dtype == np.int8
    assert model.selftest().ok


def test_hot_swap_neither_drops_nor_mixes_requests(v1, int8_bundle, eval_data, release_key) -> None:
    trust = TrustStore.of([release_key.public_key])
    models = {"1.0.0": LoadedModel.load(v1, trust, slot="a"), "1.1.0": LoadedModel.load(int8_bundle, trust, slot="b")}
    x, _ = eval_data
    expected = {v: m.predict({"image": x[:1]})["probs"] for v, m in models.items()}
    assert not np.allclose(expected["1.0.0"], expected["1.1.0"], atol=1e-6)  # the two are distinguishable
    engine = InferenceEngine(models["1.0.0"])
    results: list[tuple[str, np.ndarray]] = []
    errors: list[Exception] = []
    calls = [0] * 4
    done = threading.Event()

    def client(i: int) -> None:
        while not done.is_set():
            calls[i] += 1
            try:
                p = engine.predict({"image": x[:1]})
                results.append((p.model.manifest.version, p.outputs["probs"]))
            except InferenceError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for i in range(60):
        engine.swap(models["1.1.0" if i % 2 == 0 else "1.0.0"])
        time.sleep(0.002)
    done.set()
    for t in threads:
        t.join()
    assert not errors and len(results) == sum(calls) > 100
    assert {v for v, _ in results} == {"1.0.0", "1.1.0"}
    for version, out in results:
        np.testing.assert_allclose(out, expected[version], atol=1e-6)  # each answer came from the model it names


def _two_input_onnx(path: Path) -> None:
    """A real ONNX graph with two inputs and two outputs and a dynamic batch: sum = a + b, prod = a * b."""
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("sum", "prod")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])],
        "two",
        [a, b],
        outs,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.17+ reads; the onnx package may write newer
    onnx.save(model, path)


def test_several_inputs_and_outputs_with_dynamic_batch(tmp_path: Path, release_key: PrivateKey) -> None:
    _two_input_onnx(tmp_path / "two.onnx")
    bundle = package(tmp_path / "two.onnx", PackageOptions(name="two", version="1.0.0", sequence=1, keys=[release_key]))
    model = LoadedModel.load(bundle, TrustStore.of([release_key.public_key]), slot="a")
    assert [t.name for t in model.manifest.inputs] == ["a", "b"]
    assert [t.shape for t in model.manifest.outputs] == [(-1, 3), (-1, 3)]
    assert model.selftest().ok
    engine = InferenceEngine(model)
    for batch in (1, 4, 2):
        a = np.arange(batch * 3, dtype=np.float32).reshape(batch, 3)
        out = engine.predict({"a": a, "b": a + 1}).outputs
        np.testing.assert_allclose(out["sum"], 2 * a + 1)
        np.testing.assert_allclose(out["prod"], a * (a + 1))
    with pytest.raises(InferenceError, match="missing input 'b'"):
        engine.predict({"a": np.zeros((1, 3), np.float32), "c": np.zeros((1, 3), np.float32)})


def test_litert_fast_path_gives_the_checked_paths_results(v1, eval_data, release_key) -> None:
    """The single-input fast path (allocated shape, right dtype, contiguous) must agree with the fully
    checked path (resize, non-contiguous, float64 cast), and bad feeds must still be refused."""
    model = LoadedModel.load(v1, TrustStore.of([release_key.public_key]), slot="a")
    x = eval_data[0][:5].astype(np.float32)
    one_by_one = np.concatenate([model.predict({"image": x[i : i + 1]})["probs"] for i in range(5)])
    batched = model.predict({"image": x})["probs"]  # resizes the interpreter to batch 5
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict({"image": x[2:3]})["probs"], one_by_one[2:3], rtol=1e-5, atol=1e-6)
    strided = np.asfortranarray(x[:2])  # not C-contiguous: takes the checked path
    np.testing.assert_allclose(model.predict({"image": strided})["probs"], one_by_one[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict({"image": x[:1].astype(np.float64)})["probs"], one_by_one[:1], rtol=1e-5)
    np.testing.assert_allclose(model.predict({"x": x[:1]})["probs"], one_by_one[:1], rtol=1e-5)  # the only input
    with pytest.raises(InferenceError, match="shape"):
        model.predict({"image": np.zeros((1, 7, 8, 1), np.float32)})
    with pytest.raises(InferenceError, match="expects float32"):
        model.predict({"image": np.zeros((1, 8, 8, 1), np.int32)})
    with pytest.raises(InferenceError, match="missing input"):
        model.predict({"a": x[:1], "b": x[:1]})
