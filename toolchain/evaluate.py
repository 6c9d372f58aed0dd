"""``edgetool evaluate``: what quantization cost, measured in the device runtime.

Both models run in the runtime a device uses (LiteRT or ONNX Runtime) on the same evaluation data.
A Keras/SavedModel reference is first converted to the candidate's format (float32). Quantized
inputs and outputs are converted with their scale and zero point, so float data feeds every model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.runtime import Runtime, load_runtime
from device_agent.samples import join, per_sample, take
from toolchain import qio
from toolchain.calibration import SampleStream, open_samples, stack
from toolchain.errors import ModelError
from toolchain.fidelity import LOW_COSINE, OutputDiff, Task, diffs, is_classifier, worst
from toolchain.measure import Measurement, measure
from toolchain.sources import ModelKind, model_kind

BATCH = 32  # samples per inference call during evaluation


@dataclass(frozen=True)
class EvalOptions:
    samples: int | None = None  # evaluation samples (default: all)
    latency_runs: int = 50  # timed single-sample inferences per model; 0 skips latency and memory
    layers: int = 8  # rows of the per-layer error table; 0 skips it
    calibration: Path | None = None  # data for the per-layer debugger (default: the evaluation data)
    task: Task = "auto"  # classification: top-1 measures apply; auto: decided from the output shapes


@dataclass(frozen=True)
class ModelStats:
    path: str
    runtime: str
    bytes: int
    accuracy: float | None = None  # top-1, 0..1, when labels are given
    latency: Measurement | None = None


@dataclass(frozen=True)
class _Pair:
    """The two models compared: the candidate, and the reference as given and as run."""

    candidate: Path
    kind: ModelKind
    reference: Path
    ref_kind: ModelKind
    ref_path: Path  # the reference in the candidate's format (converted from a float source)


@dataclass
class Evaluation:
    candidate: ModelStats
    reference: ModelStats
    samples: int
    agreement: float | None  # top-1 agreement with the reference, 0..1 (classifiers only)
    outputs: list[OutputDiff]
    task: str = "classification"  # classification | other
    layers: list[dict[str, Any]] = field(default_factory=list)
    layer_note: str = ""

    @property
    def accuracy_delta_pp(self) -> float | None:
        """Candidate minus reference top-1 accuracy, in percentage points (negative = a drop)."""
        if self.candidate.accuracy is None or self.reference.accuracy is None:
            return None
        return 100.0 * (self.candidate.accuracy - self.reference.accuracy)

    @property
    def drop_pp(self) -> float | None:
        """The accuracy drop in pp (labels) or else the disagreement in pp; None for a non-classifier."""
        delta = self.accuracy_delta_pp
        if delta is not None:
            return -delta
        return None if self.agreement is None else 100.0 * (1.0 - self.agreement)

    @property
    def worst_cosine(self) -> float | None:
        """The lowest cosine of any output (what ``--min-cosine`` bounds)."""
        low = worst(self.outputs)
        return None if low is None else low.cosine

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["accuracy_delta_pp"] = self.accuracy_delta_pp
        doc["worst_cosine"] = self.worst_cosine
        doc["low_fidelity"] = any(d.cosine < LOW_COSINE for d in self.outputs)
        for out, diff in zip(doc["outputs"], self.outputs, strict=True):
            out["sqnr_db"] = _finite(diff.sqnr_db)
        doc["size_ratio"] = self.candidate.bytes / self.reference.bytes if self.reference.bytes else None
        return doc


def evaluate(candidate: Path, reference: Path, data: Path, opts: EvalOptions | None = None) -> Evaluation:
    """Compare ``candidate`` (.tflite/.onnx) with ``reference`` on ``data`` (.npz with ``x``/inputs, ``y``).

    Raises:
        ModelError: a model is missing, corrupt, or the pair cannot be compared.
        DataError: the data does not fit the models.
        RuntimeLoadError: the runtime cannot load a model.
    """
    opts = opts or EvalOptions()
    kind = model_kind(candidate)
    if kind not in (ModelKind.TFLITE, ModelKind.ONNX):
        raise ModelError(f"{candidate}: the candidate must be a .tflite or .onnx model (convert it first)")
    ref_kind = model_kind(reference)
    with tempfile.TemporaryDirectory(prefix="edgetool-") as tmp:
        ref_path = _runnable_reference(reference, ref_kind, kind, Path(tmp), data)
        cand_rt, ref_rt = load_runtime(kind.value, candidate), load_runtime(kind.value, ref_path)
        stream = open_samples(data, ref_rt.inputs, opts.samples)
        x = stack(stream)
        classifier = is_classifier(ref_rt.outputs, opts.task)
        labels = labels_from(data, len(stream)) if classifier else None
        cand_out, ref_out = predict(cand_rt, x), predict(ref_rt, x)
        one = first(ref_rt, x)
        result = Evaluation(
            candidate=_stats(candidate, cand_rt, cand_out, labels, opts=opts, sample=one),
            reference=_stats(reference, ref_rt, ref_out, labels, opts=opts, run_path=ref_path, sample=one),
            samples=len(stream),
            agreement=top1_agreement(cand_out, ref_out) if classifier else None,
            outputs=diffs(cand_out, ref_out),
            task="classification" if classifier else "other",
        )
        if opts.layers:
            _layer_table(result, _Pair(candidate, kind, reference, ref_kind, ref_path), opts, stream)
    return result


def _runnable_reference(reference: Path, ref_kind: ModelKind, kind: ModelKind, tmp: Path, data: Path) -> Path:
    if ref_kind is kind:
        return reference
    if ref_kind is ModelKind.TFLITE:
        raise ModelError(f"cannot compare a {kind} candidate with a {ref_kind} reference; use the same format")
    from toolchain.convert import convert

    shapes = None
    if ref_kind is ModelKind.ONNX:  # ONNX → TFLite needs fixed input shapes: the data's
        from toolchain.validate import first_sample

        shapes = {k: v.shape for k, v in (first_sample(data, reference, "onnx") or {}).items()}
    return convert(reference, kind.value, tmp / f"reference.{kind.value}", input_shapes=shapes).output


def predict(runtime: Runtime, x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float outputs for float inputs ``x`` (quantized I/O handled), in batches of ``BATCH``."""
    n = len(next(iter(x.values())))
    if per_sample(runtime.inputs):
        return _predict_each(runtime, x, n)
    fixed = runtime.inputs[0].shape[0] if runtime.inputs[0].shape and runtime.inputs[0].shape[0] > 0 else BATCH
    chunks: dict[str, list[np.ndarray]] = {s.name: [] for s in runtime.outputs}
    for start in range(0, n, fixed):
        batch = {k: v[start : start + fixed] for k, v in x.items()}
        for spec, value in zip(runtime.outputs, runtime.run(qio.feeds(runtime.inputs, batch)).values(), strict=True):
            chunks[spec.name].append(qio.from_output(spec, value))
    return {k: np.concatenate(v) for k, v in chunks.items()}


def first(runtime: Runtime, x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first sample of stacked ``x`` as ``runtime`` takes it (float data)."""
    return {s.name: take(s, x[s.name], 0) for s in runtime.inputs}


def _predict_each(runtime: Runtime, x: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """One sample per call, for models with an input that does not stack along a batch axis."""
    parts: dict[str, list[np.ndarray]] = {s.name: [] for s in runtime.outputs}
    for i in range(n):
        sample = {s.name: take(s, x[s.name], i) for s in runtime.inputs}
        result = runtime.run(qio.feeds(runtime.inputs, sample))
        for spec in runtime.outputs:
            parts[spec.name].append(qio.from_output(spec, result[spec.name]))
    return {k: join(v) for k, v in parts.items()}


def labels_from(data: Path, n: int) -> np.ndarray | None:
    """The first ``n`` labels ``y`` of an evaluation .npz, or None when it has none, or when some are -1
    (a ``fleetctl capture export`` marks a sample nobody labelled so: no accuracy on guessed labels)."""
    if data.is_dir() or data.suffix != ".npz":
        return None
    with np.load(data, allow_pickle=False) as npz:
        labels = np.asarray(npz["y"][:n]).reshape(-1) if "y" in npz.files else None
    return None if labels is None or (labels.dtype.kind in "iu" and bool((labels < 0).any())) else labels


def _top1(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    first = next(iter(outputs.values()))
    top: np.ndarray = first.reshape(len(first), -1).argmax(axis=1)
    return top


def top1_accuracy(outputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    """Share of samples whose top-1 class (of the first output) is the label; None without labels."""
    return None if labels is None else float(np.mean(_top1(outputs) == labels))


def top1_agreement(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    return float(np.mean(_top1(a) == _top1(b)))


def _finite(value: float) -> float | None:
    """JSON has no infinity: an exact match's SQNR is reported as null."""
    return value if np.isfinite(value) else None


def _stats(
    path: Path,
    runtime: Runtime,
    outputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    *,
    opts: EvalOptions,
    run_path: Path | None = None,
    sample: Mapping[str, np.ndarray] | None = None,
) -> ModelStats:
    run_path = run_path or path
    accuracy = top1_accuracy(outputs, labels)
    latency = measure(runtime.name, run_path, opts.latency_runs, sample) if opts.latency_runs else None
    return ModelStats(str(path), runtime.name, run_path.stat().st_size, accuracy, latency)


def _layer_table(result: Evaluation, pair: _Pair, opts: EvalOptions, eval_stream: SampleStream) -> None:
    """Fill ``result.layers`` with the layers that lose most (or say why there is no table)."""
    stream = open_samples(opts.calibration, eval_stream.inputs, 64) if opts.calibration else eval_stream
    if pair.kind is ModelKind.ONNX:
        if not _has_qdq(pair.candidate):
            result.layer_note = "no per-layer table: the candidate has no QuantizeLinear/DequantizeLinear nodes"
            return
        from toolchain.quantize import onnx as q_onnx

        result.layers = q_onnx.layer_errors(pair.ref_path, pair.candidate, stream)[: opts.layers]
        result.layer_note = "onnxruntime qdq_loss_debug: SQNR (dB) of each tensor vs the float model, lowest first"
        return
    if not pair.ref_kind.is_float_source:
        _litert_layer_table(result, pair, opts, stream)
        return
    from toolchain.quantize import tflite as q_tflite

    result.layers = q_tflite.layer_errors(pair.reference, pair.ref_kind, stream)[: opts.layers]
    result.layer_note = "TFLite QuantizationDebugger on an int8 quantization of the reference, largest MSE first"


def _litert_layer_table(result: Evaluation, pair: _Pair, opts: EvalOptions, stream: SampleStream) -> None:
    """The AI Edge quantizer's per-layer cosine loss of a quantized .tflite against a float .tflite reference."""
    from toolchain.quantize import litert
    from toolchain.tflite_intake import normalise

    candidate = pair.candidate.read_bytes()
    if litert.is_float(candidate):
        result.layer_note = "no per-layer table: the candidate is a float model"
        return
    reference = normalise(pair.ref_path.read_bytes(), str(pair.ref_path)).data
    result.layers = litert.layer_errors(reference, candidate, stream)[: opts.layers]
    result.layer_note = (
        "AI Edge quantizer validator: each layer's own cosine loss against the float model, largest first"
    )


def _has_qdq(model: Path) -> bool:
    import onnx

    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(model)).graph.node)
