"""``--mode auto``: the smallest, fastest variant whose fidelity stays within the bounds given.

The bounds: ``--max-accuracy-drop`` (top-1 drop or disagreement in pp; classifiers only) and
``--min-cosine`` (the worst output's mean cosine similarity with the float model; any task).

Variants are tried in order of how they run on a device: full int8 first (integer kernels, the
smallest file), then int8 with the worst layers kept in float, one more layer per step, in the
order the per-layer error table ranks them (TFLite: the quantization debugger's denylist; ONNX:
``nodes_to_exclude``), then weight-only and wider variants. The first variant within the bound
wins. Every trial runs in the device runtime on the evaluation data, against the float model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from device_agent.runtime import load_runtime
from toolchain.calibration import open_samples, stack
from toolchain.errors import QuantizeError
from toolchain.evaluate import first, labels_from, predict, top1_accuracy, top1_agreement
from toolchain.fidelity import OutputDiff, Task, diffs, is_classifier, worst
from toolchain.measure import Measurement, measure
from toolchain.quantize import (
    DEFAULT_SAMPLES,
    OnnxOptions,
    QuantizeOptions,
    QuantizeResult,
    TFLiteOptions,
    quantize,
)
from toolchain.sources import model_kind

MAX_FLOAT_LAYERS = 8  # most layers auto mode keeps in float before moving to other modes


@dataclass(frozen=True)
class AutoOptions:
    format: Literal["tflite", "onnx"]
    max_drop_pp: float | None  # allowed top-1 accuracy drop (labels) or disagreement (no labels), in pp
    eval_data: Path
    calibration: Path
    min_cosine: float | None = None  # lowest allowed cosine of the worst output, 0..1
    task: Task = "auto"
    samples: int | None = DEFAULT_SAMPLES
    max_float_layers: int = MAX_FLOAT_LAYERS
    per_channel: bool = True  # ONNX int8
    calibrate: Literal["minmax", "entropy", "percentile"] = "minmax"  # ONNX int8
    latency_runs: int = 0  # > 0: also measure each variant's host latency and memory (for reports)


@dataclass
class Trial:
    name: str
    options: QuantizeOptions
    bytes: int
    seconds: float  # quantization time
    agreement: float | None
    accuracy: float | None
    drop_pp: float | None
    within: bool
    path: Path
    latency: Measurement | None = None
    outputs: list[OutputDiff] = field(default_factory=list)

    @property
    def cosine(self) -> float:
        low = worst(self.outputs)
        return 1.0 if low is None else low.cosine

    def summary(self) -> str:
        """The trial's fidelity in a few words (top-1 drop for a classifier, always the worst cosine)."""
        drop = f"drop {self.drop_pp:.2f} pp, " if self.drop_pp is not None else ""
        return f"{drop}worst cosine {self.cosine:.4f}"


@dataclass
class AutoResult:
    reference_bytes: int
    reference_accuracy: float | None
    reference_latency: Measurement | None = None
    trials: list[Trial] = field(default_factory=list)
    chosen: Trial | None = None
    ranked_layers: list[str] = field(default_factory=list)
    classifier: bool = True
    bounds: str = ""  # the bounds in words, e.g. "drop ≤ 1 pp, worst cosine ≥ 0.98"

    def reason(self) -> str:
        """One sentence: what was chosen and why, or why nothing was."""
        if self.chosen is None:
            best = max(self.trials, key=lambda t: t.cosine, default=None)
            closest = f"; the closest was {best.name} ({best.summary()})" if best else ""
            return f"no variant stayed within {self.bounds}{closest}; the float model is the only safe choice"
        rejected = [t for t in self.trials if not t.within]
        before = f" after {', '.join(f'{t.name} ({t.summary()})' for t in rejected)} missed it" if rejected else ""
        return (
            f"chose {self.chosen.name}: {self.chosen.summary()} within {self.bounds}, "
            f"{self.chosen.bytes / self.reference_bytes:.2f}× the float size{before}"
        )


class _Judge:
    """Runs candidates on the evaluation data and scores them against the float model."""

    def __init__(self, kind: str, float_model: Path, opts: AutoOptions) -> None:
        self.kind, self.opts = kind, opts
        runtime = load_runtime(kind, float_model)
        stream = open_samples(opts.eval_data, runtime.inputs)
        self.x = stack(stream)
        self.reference = predict(runtime, self.x)
        self.sample = first(runtime, self.x)
        self.classifier = is_classifier(runtime.outputs, opts.task)
        if opts.max_drop_pp is not None and not self.classifier:
            raise QuantizeError(
                f"--max-accuracy-drop needs a classifier output ([batch, classes]); {float_model.stem} is not one "
                "(say --task classification if it is), so bound --min-cosine instead"
            )
        self.labels = labels_from(opts.eval_data, len(stream)) if self.classifier else None
        self.ref_accuracy = top1_accuracy(self.reference, self.labels)

    def trial(self, name: str, model: Path, q: QuantizeResult) -> Trial:
        """Run ``model`` on the evaluation data and score it against the float model and the bounds."""
        outputs = predict(load_runtime(self.kind, model), self.x)
        agreement = top1_agreement(outputs, self.reference) if self.classifier else None
        accuracy = top1_accuracy(outputs, self.labels)
        drop = None
        if accuracy is not None and self.ref_accuracy is not None:
            drop = 100.0 * (self.ref_accuracy - accuracy)
        elif agreement is not None:
            drop = 100.0 * (1.0 - agreement)
        measured = diffs(outputs, self.reference)
        cosine = min((d.cosine for d in measured), default=1.0)
        within = (self.opts.max_drop_pp is None or (drop is not None and drop <= self.opts.max_drop_pp)) and (
            self.opts.min_cosine is None or cosine >= self.opts.min_cosine
        )
        return Trial(name, q.options, q.bytes, q.seconds, agreement, accuracy, drop, within, model, outputs=measured)


def bounds_text(opts: AutoOptions) -> str:
    """The bounds of ``opts`` in words."""
    parts = [f"drop ≤ {opts.max_drop_pp:g} pp"] if opts.max_drop_pp is not None else []
    parts += [f"worst cosine ≥ {opts.min_cosine:g}"] if opts.min_cosine is not None else []
    return " and ".join(parts)


def auto_quantize(
    source: Path, output: Path, opts: AutoOptions, log: Callable[[str], None] | None = None
) -> AutoResult:
    """Search variants of ``source`` and write the first one within the bounds of ``opts`` to ``output``.

    Raises:
        QuantizeError: no variant fits the bound (nothing is written), or the source cannot be quantized.
        ModelError, DataError: bad model or data.
    """
    say = log or (lambda _msg: None)
    model_kind(source)
    with tempfile.TemporaryDirectory(prefix="edgetool-auto-") as tmp:
        work = Path(tmp)
        float_model = _float_model(source, opts, work)
        judge = _Judge(opts.format, float_model, opts)
        result = AutoResult(float_model.stat().st_size, judge.ref_accuracy, _latency(float_model, opts, judge.sample))
        result.classifier, result.bounds = judge.classifier, bounds_text(opts)
        # The TFLite converter starts from the Keras/SavedModel source; the others from the float model.
        q_source = source if opts.format == "tflite" and model_kind(source).is_float_source else float_model
        for name, options in _variants(q_source, opts, result):
            path = work / f"{len(result.trials)}.{opts.format}"
            q = quantize(q_source, path, options, opts.calibration)
            trial = judge.trial(name, path, q)
            trial.latency = _latency(path, opts, judge.sample)
            result.trials.append(trial)
            say(f"{name}: {q.bytes} bytes, {trial.summary()}")
            if trial.within:
                result.chosen = trial
                shutil.copyfile(path, output)
                break
    if result.chosen is None:
        raise QuantizeError(result.reason())
    return result


def _latency(model: Path, opts: AutoOptions, sample: dict[str, np.ndarray]) -> Measurement | None:
    return measure(opts.format, model, opts.latency_runs, sample) if opts.latency_runs else None


def _float_model(source: Path, opts: AutoOptions, work: Path) -> Path:
    from toolchain.convert import convert
    from toolchain.validate import first_sample

    shapes = None
    if opts.format == "tflite" and model_kind(source).value == "onnx":  # onnx2tf needs fixed input shapes
        shapes = {k: v.shape for k, v in (first_sample(opts.calibration, source, "onnx") or {}).items()}
    return convert(source, opts.format, work / f"float.{opts.format}", input_shapes=shapes).output


def _variants(source: Path, opts: AutoOptions, result: AutoResult) -> Iterator[tuple[str, QuantizeOptions]]:
    """Variants in preference order; the mixed ones are ranked after full int8 has been scored."""
    converter = opts.format == "tflite" and model_kind(source).is_float_source
    if opts.format == "tflite":
        # The TFLite converter can keep float I/O; the AI Edge quantizer (other sources) makes int8 I/O.
        base: QuantizeOptions = TFLiteOptions("int8", io="float" if converter else "int8", samples=opts.samples)
    else:
        base = OnnxOptions("int8", per_channel=opts.per_channel, calibrate=opts.calibrate, samples=opts.samples)
    yield "int8", base
    ranked = _rank_layers(source, opts, result.trials[0].path)
    result.ranked_layers = ranked
    for k in range(1, min(opts.max_float_layers, len(ranked)) + 1):
        yield f"int8 + {k} float layer{'s' if k > 1 else ''}", replace(base, float_nodes=tuple(ranked[:k]))
    if opts.format == "tflite":
        yield "int16x8", TFLiteOptions("int16x8", samples=opts.samples)
        yield "dynamic", TFLiteOptions("dynamic")
        if not converter:
            yield "weight-only", TFLiteOptions("weight-only")
        yield "float16", TFLiteOptions("float16")
    else:
        yield "dynamic", OnnxOptions("dynamic", per_channel=opts.per_channel)


def _rank_layers(source: Path, opts: AutoOptions, int8_model: Path) -> list[str]:
    """Layer (TFLite tensor / ONNX node) names, worst first, from the per-layer error table."""
    kind = model_kind(source)
    if opts.format == "tflite" and not kind.is_float_source:  # the AI Edge quantizer's: per-tensor cosine
        from toolchain.quantize import litert

        stream = open_samples(opts.calibration, load_runtime("tflite", source).inputs, min(opts.samples or 16, 16))
        rows = litert.layer_errors(source.read_bytes(), int8_model.read_bytes(), stream)
        return [row["tensor"] for row in rows]
    if opts.format == "tflite":
        from toolchain.backends.tensorflow import TFSource
        from toolchain.quantize import tflite as q_tflite

        stream = open_samples(opts.calibration, TFSource(source, kind).inputs, min(opts.samples or 64, 64))
        return [row["tensor"] for row in q_tflite.layer_errors(source, kind, stream)]
    from toolchain.quantize import onnx as q_onnx

    stream = open_samples(opts.calibration, load_runtime("onnx", source).inputs, min(opts.samples or 64, 64))
    rows = q_onnx.layer_errors(source, int8_model, stream)
    return _unique(row["layer"] for row in rows if not row["layer"].endswith(("QuantizeLinear", "DequantizeLinear")))


def _unique(names: Iterator[str] | Sequence[str]) -> list[str]:
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    return seen
