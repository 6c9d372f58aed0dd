"""``edgetool package`` from any model an engineer brings: a .keras/.h5, SavedModel or PyTorch .pt2 source
is converted to the device format first (``toolchain.convert``: the TFLite converter, tf2onnx, torch.onnx,
onnx2tf), and the converted model is run against its source before anything is packaged.

The check compares the source's own framework (TensorFlow for Keras/SavedModel, PyTorch for .pt2) with
the device runtime on the same inputs: the first self-test (or calibration) sample, and deterministic
inputs of the declared shapes (for a .pt2, the program's example inputs). Every output must agree within
``SOURCE_TOLERANCE`` times max(1, the largest |output|). The converter versions, the measured error and
the tolerance go into the bundle's provenance (``conversion``).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.convert import TARGETS, ConvertResult, convert
from toolchain.errors import ModelError
from toolchain.packaging import PackageOptions, package
from toolchain.sources import ModelKind, model_kind

# A converted model must reproduce its source within this, times max(1, the largest |output|): float32
# conversions only reorder and fuse arithmetic (measured: <= 2e-6 on the reference and test models).
SOURCE_TOLERANCE = 1e-4
Feeds = dict[str, np.ndarray]


def package_any(source: Path, opts: PackageOptions, target: str = "tflite") -> bytes:
    """Bundle bytes for ``source``: .tflite/.onnx as they are, any other model converted to ``target`` first.

    Raises:
        ModelError: unknown or unloadable source, a conversion that fails or differs from its source.
        UnsupportedOpsError: the source uses ops the target lacks (named).
        InputError, RuntimeLoadError: as ``toolchain.packaging.package``.
    """
    kind = model_kind(source)
    if kind in (ModelKind.TFLITE, ModelKind.ONNX):
        return package(source, opts)
    if target not in TARGETS:
        raise ModelError(f"unknown format {target!r}; use tflite or onnx")
    with tempfile.TemporaryDirectory(prefix="edgetool-pkg-") as tmp:
        result = convert(source, target, Path(tmp) / f"model.{target}")
        error = check_against_source(result, _first_sample(opts, result))
        conversion = {
            "source_kind": kind.value,
            "source_sha256": source_sha256(source),
            "target": target,
            "tools": {**result.tools, **_tf_tools(kind, target)},
            "max_abs_error": float(f"{error:.3g}"),
            "tolerance": SOURCE_TOLERANCE,
        }
        extra = {**opts.extra_provenance, "conversion": conversion}
        if opts.source_model is None:  # the model the engineer brought is the source
            extra["source_sha256"] = conversion["source_sha256"]
        return package(result.output, replace(opts, extra_provenance=extra))


def _first_sample(opts: PackageOptions, result: ConvertResult) -> Feeds | None:
    from toolchain.validate import first_sample

    data = opts.selftest_inputs or opts.calibration
    return first_sample(data, result.output, result.target) if data is not None else None


def check_against_source(result: ConvertResult, sample: Mapping[str, np.ndarray] | None) -> float:
    """The largest abs difference between the converted model (device runtime) and its source.

    Raises:
        ModelError: an output differs beyond ``SOURCE_TOLERANCE`` (scaled), or is missing.
    """
    from device_agent.runtime import load_runtime
    from toolchain.validate import synthetic_feeds

    runtime = load_runtime(result.target, result.output)
    if result.source_kind is ModelKind.PT2:
        from toolchain.backends import torch as torch_backend

        cases = torch_backend.example_run(result.source, [s.name for s in runtime.inputs])
    else:
        feeds = [synthetic_feeds(runtime.inputs)]
        if sample is not None:
            feeds.append({k: np.asarray(v)[None, ...] if _needs_batch(runtime, k, v) else v for k, v in sample.items()})
        run = _tf_runner(result.source, result.source_kind)
        cases = [(f, run(f)) for f in feeds]
    worst = 0.0
    for feeds_, want in cases:
        got = runtime.run(feeds_)
        worst = max(worst, _compare(got, want, [s.name for s in runtime.outputs]))
    return worst


def _needs_batch(runtime: Any, name: str, value: np.ndarray) -> bool:
    spec = next((s for s in runtime.inputs if s.name == name), None)
    return spec is not None and len(spec.shape) == np.ndim(value) + 1


def _compare(got: Mapping[str, np.ndarray], want: Sequence[tuple[str, np.ndarray]], names: list[str]) -> float:
    """Max abs error of ``got`` against ``want`` (matched by name, else by position)."""
    wanted = dict(want)
    worst = 0.0
    for index, name in enumerate(names):
        ref = wanted.get(name, want[index][1] if index < len(want) else None)
        if ref is None or got[name].shape != np.shape(ref):
            shape = None if ref is None else list(np.shape(ref))
            raise ModelError(f"the converted model's output {name!r} is {list(got[name].shape)}, the source's {shape}")
        ref64 = np.asarray(ref, np.float64)
        err = float(np.max(np.abs(np.asarray(got[name], np.float64) - ref64), initial=0.0))
        scale = max(1.0, float(np.max(np.abs(ref64), initial=0.0)))
        if not err <= SOURCE_TOLERANCE * scale:  # NaN fails too
            raise ModelError(
                f"the converted model differs from its source on output {name!r} by {err:.3g} (tolerance "
                f"{SOURCE_TOLERANCE * scale:.3g}); nothing is packaged"
            )
        worst = max(worst, err)
    return worst


def _tf_runner(source: Path, kind: ModelKind) -> Callable[[Mapping[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """The TensorFlow source, loaded once, as a function of feeds (inputs matched by name, else by position)."""
    from toolchain.backends import tensorflow as tfb

    loaded = tfb.TFSource(source, kind)

    def run(feeds: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
        values = list(feeds.values())
        args = [tfb.tf.constant(feeds[s.name] if s.name in feeds else values[i]) for i, s in enumerate(loaded.inputs)]
        out = loaded.function(*args)
        items = out.items() if isinstance(out, Mapping) else enumerate(out if isinstance(out, list | tuple) else [out])
        return [(str(k), np.asarray(v)) for k, v in items]

    return run


def _tf_tools(kind: ModelKind, target: str) -> dict[str, str]:
    """TensorFlow, Keras and (for ONNX) tf2onnx versions of a Keras/SavedModel conversion; convert records the
    PyTorch route's own."""
    if kind is ModelKind.PT2:
        return {}
    from importlib.metadata import PackageNotFoundError, version

    from toolchain.backends import tensorflow as tfb

    out = {"tensorflow": str(tfb.tf.__version__)}
    for dist in ("keras", "tf2onnx") if target == "onnx" else ("keras",):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def source_sha256(source: Path) -> str:
    """sha256 of a model file, or of a SavedModel directory's files (relative path and bytes, sorted)."""
    h = hashlib.sha256()
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for path in files:
        if source.is_dir():
            h.update(str(path.relative_to(source)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()
