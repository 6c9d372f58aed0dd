"""``edgetool package``: turn a .tflite/.onnx model into a signed, reproducible bundle.

The model's inputs and outputs are read from the device runtime itself, the model is run on the
self-test inputs to record the outputs a device must reproduce, and drift reference histograms are
computed from calibration data when given.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from device_agent import __version__
from device_agent.bundle import (
    COMPACT_FORMAT,
    FileEntry,
    Manifest,
    Postprocess,
    PrivateKey,
    Requirements,
    RuntimeSpec,
    TensorInfo,
    build_bundle,
)
from device_agent.runtime import Runtime, load_runtime
from device_agent.runtime.base import dequantize
from device_agent.samples import batch_first, join, per_sample, take
from toolchain import selftest as st
from toolchain.errors import DataError, InputError
from toolchain.fielddata import field_data
from toolchain.npzio import feeds_for, load_arrays

RUNTIME_BY_SUFFIX = {".tflite": "tflite", ".onnx": "onnx"}
DRIFT_BINS = 10
DRIFT_SAMPLES = 256  # calibration samples used for drift histograms
RUNTIME_OVERHEAD_BYTES = 8 << 20  # bytes; interpreter + arena baseline in the RAM estimate
COMPACT_SLACK = 1024  # bytes; what the compact self-test adds to the manifest and the ZIP headers


@dataclass
class PackageOptions:
    name: str
    version: str
    sequence: int
    keys: Sequence[PrivateKey]
    selftest_inputs: Path | None = None
    labels: Path | None = None
    calibration: Path | None = None
    report: Path | None = None  # a quantization report.json carried into provenance
    source_model: Path | None = None  # the float model this one was made from
    description: str = ""
    task: str | None = None  # classification | regression | none; default from labels
    selftest_samples: int = 8
    threads: int = 1
    min_runtime_version: str = "0.0.0"
    min_agent_version: str = "0.1.0"
    architectures: tuple[str, ...] = ()
    ram_bytes: int | None = None
    max_overhead: int | None = None  # bytes a bundle may add to its model; default max(64 KiB, 10 %)
    extra_provenance: dict[str, Any] = field(default_factory=dict)


def runtime_kind(model: Path) -> str:
    try:
        return RUNTIME_BY_SUFFIX[model.suffix.lower()]
    except KeyError:
        raise InputError(f"{model}: a model must be .tflite or .onnx, not {model.suffix or 'no suffix'}") from None


def package(model_path: Path, opts: PackageOptions) -> bytes:
    """Build the bundle bytes.

    Raises:
        InputError: unreadable model, data that does not fit the model, bad options.
        RuntimeLoadError: the runtime cannot load or run the model.
    """
    kind = runtime_kind(model_path)
    try:
        model_bytes = model_path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {model_path}: {exc.strerror}") from None
    runtime = load_runtime(kind, model_path, opts.threads)
    model_file = f"model/model.{kind}"
    contents: dict[str, bytes] = {model_file: model_bytes}

    calibration = load_arrays(opts.calibration) if opts.calibration else None
    calib_feeds = feeds_for(calibration, runtime.inputs, str(opts.calibration)) if calibration else None
    inputs = _selftest_inputs(runtime, opts, calib_feeds, model_bytes)
    selftest = st.full(runtime.inputs, runtime.outputs, inputs, run_samples(runtime, inputs))
    contents[st.PATH] = selftest.data

    postprocess = _postprocess(runtime, opts, contents)
    drift_path = None
    if calib_feeds is not None:
        contents["drift.json"] = drift_reference(runtime, calib_feeds, postprocess)
        drift_path = "drift.json"

    manifest = Manifest(
        name=opts.name,
        version=opts.version,
        sequence=opts.sequence,
        description=opts.description,
        runtime=RuntimeSpec(kind, opts.min_runtime_version),
        model=FileEntry(model_file, 0, "0" * 64),  # pinned by build_bundle
        inputs=runtime.inputs,
        outputs=runtime.outputs,
        postprocess=postprocess,
        requirements=_requirements(runtime, opts, contents, len(model_bytes)),
        selftest=selftest.spec,
        drift=drift_path,
        provenance=_provenance(model_bytes, runtime, opts),
    )
    return _lean(build_bundle(manifest, contents, opts.keys), manifest, contents, runtime, inputs, opts)


def _lean(
    bundle: bytes,
    manifest: Manifest,
    contents: dict[str, bytes],
    runtime: Runtime,
    inputs: Mapping[str, np.ndarray],
    opts: PackageOptions,
) -> bytes:
    """``bundle`` when it adds at most the overhead bound to its model, else the bundle with a compact
    self-test (toolchain/selftest.py).

    Raises:
        DataError: even the smallest compact self-test leaves the bundle over the bound.
    """
    model_size = len(contents[manifest.model.path])
    bound = opts.max_overhead if opts.max_overhead is not None else st.overhead_bound(model_size)
    if len(bundle) - model_size <= bound:
        return bundle
    rest = len(bundle) - model_size - len(contents[st.PATH])
    target = st.Model(
        runtime.inputs, runtime.outputs, lambda feeds: run_samples(runtime, feeds), manifest.postprocess.output
    )
    seed = int.from_bytes(hashlib.sha256(contents[manifest.model.path]).digest()[:8], "little") >> 1
    selftest = st.compact(target, inputs, bound - rest - COMPACT_SLACK, seed)
    contents = {**contents, st.PATH: selftest.data}
    requirements = replace(manifest.requirements, flash_bytes=sum(len(b) for b in contents.values()))
    manifest = replace(manifest, selftest=selftest.spec, format=COMPACT_FORMAT, requirements=requirements)
    bundle = build_bundle(manifest, contents, opts.keys)
    if len(bundle) - model_size > bound:
        raise DataError(
            f"the bundle adds {len(bundle) - model_size} bytes to its {model_size}-byte model, over the "
            f"{bound}-byte bound even with a compact self-test; raise --max-overhead or give smaller --selftest-inputs"
        )
    return bundle


def run_samples(runtime: Runtime, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run samples along axis 0 one batch at a time; concatenate the outputs."""
    n = len(next(iter(feeds.values())))
    if per_sample(runtime.inputs):
        parts: dict[str, list[np.ndarray]] = {s.name: [] for s in runtime.outputs}
        for i in range(n):
            for name, value in runtime.run({s.name: take(s, feeds[s.name], i) for s in runtime.inputs}).items():
                parts[name].append(value)
        return {k: join(v) for k, v in parts.items()}
    batch = runtime.inputs[0].shape[0] if runtime.inputs[0].shape and runtime.inputs[0].shape[0] > 0 else 1
    chunks: dict[str, list[np.ndarray]] = {s.name: [] for s in runtime.outputs}
    for start in range(0, n - batch + 1, batch):
        result = runtime.run({k: v[start : start + batch] for k, v in feeds.items()})
        for name, value in result.items():
            chunks[name].append(value)
    return {k: np.concatenate(v) for k, v in chunks.items()}


def _selftest_inputs(
    runtime: Runtime, opts: PackageOptions, calib: dict[str, np.ndarray] | None, model_bytes: bytes
) -> dict[str, np.ndarray]:
    if opts.selftest_inputs:
        feeds = feeds_for(load_arrays(opts.selftest_inputs), runtime.inputs, str(opts.selftest_inputs))
        return {k: v[: opts.selftest_samples] for k, v in feeds.items()}
    if calib is not None:
        return {k: v[: opts.selftest_samples] for k, v in calib.items()}
    # Deterministic: the seed comes from the model itself, so the same model gives the same bundle.
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(model_bytes).digest()[:8], "little"))
    return {s.name: _random_input(rng, s, opts.selftest_samples) for s in runtime.inputs}


def _random_input(rng: np.random.Generator, spec: TensorInfo, n: int) -> np.ndarray:
    sample = spec.shape[1:] if batch_first(spec) else spec.shape
    shape = (n, *[d if d > 0 else 1 for d in sample])
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    info = np.iinfo(dtype)
    lo, hi = (info.min, info.max) if dtype.itemsize == 1 else (0, 10)
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)


def _postprocess(runtime: Runtime, opts: PackageOptions, contents: dict[str, bytes]) -> Postprocess:
    task = opts.task or ("classification" if opts.labels else "none")
    if task not in ("classification", "regression", "none"):
        raise InputError(f"unknown task {task!r}: use classification, regression or none")
    labels_path = None
    if opts.labels:
        try:
            text = opts.labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read labels {opts.labels}: {exc}") from None
        labels = [line.strip() for line in text.splitlines() if line.strip()]
        classes = runtime.outputs[0].shape[-1] if runtime.outputs[0].shape else -1
        if classes > 0 and len(labels) != classes:
            raise DataError(f"{opts.labels} has {len(labels)} labels, the model's first output has {classes} classes")
        contents["labels.txt"] = ("\n".join(labels) + "\n").encode()
        labels_path = "labels.txt"
    output = runtime.outputs[0].name if task == "classification" else None
    return Postprocess(kind=task, output=output, labels=labels_path)


def _histogram(values: np.ndarray, edges: np.ndarray | None = None) -> dict[str, list[float]]:
    values = values.astype(np.float64).ravel()
    if edges is None:
        quantiles = np.quantile(values, np.linspace(0, 1, DRIFT_BINS + 1)[1:-1])
        # 6 significant digits, not 6 decimals: a softmax's tail quantiles (1e-9, 1e-7, …) must stay distinct
        # edges, else they collapse to 0.0 and every tail value lands in one bin on the device (PSI ≈ 7)
        edges = np.unique([float(f"{q:.6g}") for q in quantiles])
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {
        "edges": [float(e) for e in edges],
        "fractions": [round(float(c) / len(values), 6) for c in counts],
    }


def drift_reference(runtime: Runtime, feeds: Mapping[str, np.ndarray], post: Postprocess) -> bytes:
    """Reference histograms (inner bin edges and fractions) of inputs and outputs, for PSI on the device."""
    sample = {k: v[:DRIFT_SAMPLES] for k, v in feeds.items()}
    raw = run_samples(runtime, sample)
    # Histograms live in the float domain (quantized tensors dequantized), as the agent records them.
    inputs = {s.name: dequantize(sample[s.name], s) for s in runtime.inputs}
    outputs = {s.name: dequantize(raw[s.name], s) for s in runtime.outputs}
    ref: dict[str, Any] = {
        "version": 1,
        "samples": len(next(iter(sample.values()))),
        "inputs": {k: _histogram(v) for k, v in inputs.items()},
        "outputs": {k: _histogram(v) for k, v in outputs.items()},
    }
    if post.kind == "classification" and post.output is not None:
        scores = outputs[post.output].reshape(len(outputs[post.output]), -1).astype(np.float64)
        classes = np.bincount(scores.argmax(axis=1), minlength=scores.shape[1])
        ref["classes"] = [round(float(c) / len(scores), 6) for c in classes]
        ref["confidence"] = _histogram(scores.max(axis=1), np.linspace(0.1, 0.9, 9))
    return json.dumps(ref, sort_keys=True, separators=(",", ":")).encode()


def _requirements(runtime: Runtime, opts: PackageOptions, contents: dict[str, bytes], model_size: int) -> Requirements:
    """RAM (given, else estimated), flash (every file in the bundle), agent version and architectures."""
    return Requirements(
        ram_bytes=opts.ram_bytes if opts.ram_bytes is not None else _ram_estimate(runtime, model_size),
        flash_bytes=sum(len(b) for b in contents.values()),
        min_agent_version=opts.min_agent_version,
        architectures=opts.architectures,
    )


def _ram_estimate(runtime: Runtime, model_size: int) -> int:
    io_bytes = sum(
        int(np.prod([d if d > 0 else 1 for d in t.shape])) * np.dtype(t.dtype).itemsize
        for t in (*runtime.inputs, *runtime.outputs)
    )
    return model_size + 4 * io_bytes + RUNTIME_OVERHEAD_BYTES


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    return h.hexdigest()


def _provenance(model_bytes: bytes, runtime: Runtime, opts: PackageOptions) -> dict[str, Any]:
    prov: dict[str, Any] = {
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "source_sha256": _sha256_file(opts.source_model) if opts.source_model else None,
        "calibration_sha256": _sha256_file(opts.calibration)
        if opts.calibration and opts.calibration.is_file()
        else None,
        "tools": {
            "edgefleet": __version__,
            runtime.name: runtime.version,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    if opts.report:
        try:
            prov["quantization"] = json.loads(opts.report.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read report {opts.report}: {exc}") from None
    prov["field_data"] = field_data(opts.calibration)  # a capture export's hash and query
    prov.update(opts.extra_provenance)
    return {k: v for k, v in prov.items() if v is not None}
