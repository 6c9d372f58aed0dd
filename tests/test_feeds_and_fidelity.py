"""Feeds conventions (scalars, recurrent states, single samples, per-sample files) and task-fitting
fidelity measures, tested directly as pure logic on arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device_agent.bundle.manifest import TensorInfo
from device_agent.samples import batch_first, join, per_sample, take
from toolchain import fidelity
from toolchain.calibration import open_samples, stack
from toolchain.errors import DataError
from toolchain.npzio import feeds_for

# Silero VAD's inputs: a batch-first chunk, a recurrent state with the batch on axis 1, a scalar rate.
VAD = (
    TensorInfo("input", "float32", (-1, -1)),
    TensorInfo("state", "float32", (2, -1, 128)),
    TensorInfo("sr", "int64", ()),
)


def _vad(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "input": rng.random((n, 512), np.float32),
        "state": rng.random((n, 2, 1, 128), np.float32),
        "sr": np.full(n, 16000, np.int64),
    }


def test_batch_axes() -> None:
    assert [batch_first(s) for s in VAD] == [True, False, False]
    assert per_sample(VAD) and not per_sample(VAD[:1])
    stacked = _vad(3)
    assert take(VAD[0], stacked["input"], 1).shape == (1, 512)
    assert take(VAD[1], stacked["state"], 1).shape == (2, 1, 128)
    assert take(VAD[2], stacked["sr"], 1).shape == () and isinstance(take(VAD[2], stacked["sr"], 1), np.ndarray)
    assert join([np.zeros((1, 1)), np.ones((1, 1))]).shape == (2, 1)
    assert join([np.float32(1.0), np.float32(2.0)]).shape == (2,)


def test_stacked_feeds_with_a_scalar_and_a_state() -> None:
    feeds = feeds_for(_vad(5), VAD, "vad.npz")
    assert {k: v.shape for k, v in feeds.items()} == {"input": (5, 512), "state": (5, 2, 1, 128), "sr": (5,)}


def test_a_single_sample_in_the_models_own_shapes_is_one_sample() -> None:
    one = {"input": np.zeros((1, 512), np.float32), "state": np.zeros((2, 1, 128), np.float32), "sr": np.int64(16000)}
    feeds = feeds_for(one, VAD, "one.npz")
    assert {k: v.shape for k, v in feeds.items()} == {"input": (1, 512), "state": (1, 2, 1, 128), "sr": (1,)}


def test_mixed_conventions_are_one_clear_line() -> None:
    mixed = _vad(4) | {"state": np.zeros((2, 1, 128), np.float32), "sr": np.int64(16000)}
    with pytest.raises(DataError) as err:
        feeds_for(mixed, VAD, "mixed.npz")
    message = str(err.value)
    assert "'state' is one sample" in message and "'input' is [4, 512]" in message
    assert "stack every input's samples on a new leading axis" in message and "one sample per .npz file" in message
    with pytest.raises(
        DataError, match=r"input 'sr' needs samples of shape \[\], the data is \[4, 2\] \(samples stack as \['N'\]\)"
    ):
        feeds_for(_vad(4) | {"sr": np.full((4, 2), 16000, np.int64)}, VAD, "bad.npz")


def test_streams_from_a_single_sample_npz_and_a_directory_of_npz(tmp_path: Path) -> None:
    one = {"input": np.ones((1, 512), np.float32), "state": np.ones((2, 1, 128), np.float32), "sr": np.int64(8000)}
    np.savez(tmp_path / "one.npz", **one)
    (sample,) = list(open_samples(tmp_path / "one.npz", VAD))
    assert {k: v.shape for k, v in sample.items()} == {"input": (1, 512), "state": (2, 1, 128), "sr": ()}
    assert int(sample["sr"]) == 8000 and isinstance(sample["sr"], np.ndarray)
    folder = tmp_path / "samples"
    folder.mkdir()
    data = _vad(3)
    for i in range(3):
        np.savez(folder / f"{i:03d}.npz", **{s.name: take(s, data[s.name], i) for s in VAD})
    stream = open_samples(folder, VAD)
    assert len(stream) == 3
    assert all(isinstance(s["sr"], np.ndarray) and s["sr"].shape == () for s in stream)  # ONNX Runtime wants arrays
    stacked = stack(stream)
    assert all(np.array_equal(stacked[k], data[k]) for k in data)
    assert len(open_samples(folder, VAD, limit=2)) == 2


def test_output_measures() -> None:
    rng = np.random.default_rng(0)
    want = rng.normal(size=(8, 1, 16, 16))
    same = fidelity.output_diff("map", want.copy(), want)
    assert same.cosine == pytest.approx(1.0) and same.sqnr_db == float("inf") and same.max_abs_error == 0.0
    noise = rng.normal(scale=0.1, size=want.shape)
    noisy = fidelity.output_diff("map", want + noise, want)
    expected = 10 * np.log10(np.mean(want**2) / np.mean(noise**2))
    assert noisy.sqnr_db == pytest.approx(expected) and 0.99 < noisy.cosine < 1.0 and not noisy.low
    dead = fidelity.output_diff("map", np.zeros_like(want), want)
    assert dead.cosine == 0.0 and dead.low and dead.sqnr_db == pytest.approx(0.0)
    assert fidelity.output_diff("z", np.zeros((2, 3)), np.zeros((2, 3))).cosine == 1.0  # both silent: identical
    assert fidelity.worst([noisy, dead]) is dead


def test_classifier_detection_and_warning() -> None:
    assert fidelity.is_classifier((TensorInfo("probs", "float32", (-1, 10)),))
    for shape in [(-1, 1), (-1, 1, -1, -1), (1, 896, 16)]:
        assert not fidelity.is_classifier((TensorInfo("y", "float32", shape),))
    assert fidelity.is_classifier((TensorInfo("y", "float32", (-1, 1)),), "classification")
    assert not fidelity.is_classifier((TensorInfo("y", "float32", (-1, 10)),), "other")
    good = fidelity.OutputDiff("scores", 0.1, 0.01, 0.97, 20.0)
    bad = fidelity.OutputDiff("map", 1.0, 0.3, 0.108, 1.0)
    assert fidelity.warning("int8", [good]) is None
    line = fidelity.warning("int8", [good, bad])
    assert line is not None and line.startswith("warning: int8") and "map cosine 0.108 < 0.9" in line
    assert "scores" not in line
