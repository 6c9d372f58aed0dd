"""``--mode auto``: the smallest, fastest variant whose accuracy drop stays within a bound.

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
from toolchain.evaluate import labels_from, predict, top1_accuracy, top1_agreement
from toolchain.measure import Measurement, measure
from toolchain.quantize import DEFAULT_SAMPLES, OnnxOptions, QuantizeOptions, TFLiteOptions, quantize
from toolchain.sources import model_kind

MAX_FLOAT_LAYERS = 8  # most layers auto mode keeps in float before moving to other modes


@dataclass(frozen=True)
class AutoOptions:
    format: Literal["tflite", "onnx"]
    max_drop_pp: float  # allowed top-1 accuracy drop (labels) or disagreement (no labels), in pp
    eval_data: Path
    calibration: Path
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
    agreement: float
    accuracy: float | None
    drop_pp: float
    within: bool
    path: Path
    latency: Measurement | None = None


@dataclass
class AutoResult:
    reference_bytes: int
    reference_accuracy: float | None
    reference_latency: Measurement | None = None
    trials: list[Trial] = field(default_factory=list)
    chosen: Trial | None = None
    ranked_layers: list[str] = field(default_factory=list)

    def reason(self, bound: float) -> str:
        """One sentence: what was chosen and why."""
        if self.chosen is None:
            return f"no variant stayed within {bound:g} pp; the float model is the only safe choice"
        rejected = [t for t in self.trials if not t.within]
        before = f" after {', '.join(f'{t.name} ({t.drop_pp:.2f} pp)' for t in rejected)} missed it" if rejected else ""
        return (
            f"chose {self.chosen.name}: drop {self.chosen.drop_pp:.2f} pp ≤ {bound:g} pp, "
            f"{self.chosen.bytes / self.reference_bytes:.2f}× the float size{before}"
        )


class _Judge:
    """Runs candidates on the evaluation data and scores them against the float model."""

    def __init__(self, kind: str, float_model: Path, eval_data: Path) -> None:
        self.kind = kind
        runtime = load_runtime(kind, float_model)
        stream = open_samples(eval_data, runtime.inputs)
        self.x = stack(stream)
        self.reference = predict(runtime, self.x)
        self.labels = labels_from(eval_data, len(stream))
        self.ref_accuracy = self.accuracy(self.reference)

    def accuracy(self, outputs: dict[str, np.ndarray]) -> float | None:
        return top1_accuracy(outputs, self.labels)

    def score(self, model: Path) -> tuple[float, float | None, float]:
        """(agreement, accuracy, drop in pp) of ``model``."""
        outputs = predict(load_runtime(self.kind, model), self.x)
        agreement, accuracy = top1_agreement(outputs, self.reference), self.accuracy(outputs)
        if accuracy is not None and self.ref_accuracy is not None:
            return agreement, accuracy, 100.0 * (self.ref_accuracy - accuracy)
        return agreement, accuracy, 100.0 * (1.0 - agreement)


def auto_quantize(
    source: Path, output: Path, opts: AutoOptions, log: Callable[[str], None] | None = None
) -> AutoResult:
    """Search variants of ``source`` and write the first one within ``opts.max_drop_pp`` to ``output``.

    Raises:
        QuantizeError: no variant fits the bound (nothing is written), or the source cannot be quantized.
        ModelError, DataError: bad model or data.
    """
    say = log or (lambda _msg: None)
    model_kind(source)
    with tempfile.TemporaryDirectory(prefix="edgetool-auto-") as tmp:
        work = Path(tmp)
        float_model = _float_model(source, opts, work)
        judge = _Judge(opts.format, float_model, opts.eval_data)
        result = AutoResult(float_model.stat().st_size, judge.ref_accuracy, _latency(float_model, opts))
        # The TFLite converter starts from the Keras/SavedModel source; ONNX from the float ONNX.
        q_source = source if opts.format == "tflite" else float_model
        for name, options in _variants(q_source, opts, result):
            path = work / f"{len(result.trials)}.{opts.format}"
            q = quantize(q_source, path, options, opts.calibration)
            agreement, accuracy, drop = judge.score(path)
            trial = Trial(name, options, q.bytes, q.seconds, agreement, accuracy, drop, drop <= opts.max_drop_pp, path)
            trial.latency = _latency(path, opts)
            result.trials.append(trial)
            say(f"{name}: {q.bytes} bytes, drop {drop:.2f} pp, agreement {100 * agreement:.1f} %")
            if trial.within:
                result.chosen = trial
                shutil.copyfile(path, output)
                break
    if result.chosen is None:
        raise QuantizeError(result.reason(opts.max_drop_pp))
    return result


def _latency(model: Path, opts: AutoOptions) -> Measurement | None:
    return measure(opts.format, model, opts.latency_runs) if opts.latency_runs else None


def _float_model(source: Path, opts: AutoOptions, work: Path) -> Path:
    from toolchain.convert import convert

    return convert(source, opts.format, work / f"float.{opts.format}").output


def _variants(source: Path, opts: AutoOptions, result: AutoResult) -> Iterator[tuple[str, QuantizeOptions]]:
    """Variants in preference order; the mixed ones are ranked after full int8 has been scored."""
    if opts.format == "tflite":
        base: QuantizeOptions = TFLiteOptions("int8", io="float", samples=opts.samples)
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
        yield "float16", TFLiteOptions("float16")
    else:
        yield "dynamic", OnnxOptions("dynamic", per_channel=opts.per_channel)


def _rank_layers(source: Path, opts: AutoOptions, int8_model: Path) -> list[str]:
    """Layer (TFLite tensor / ONNX node) names, worst first, from the per-layer error table."""
    kind = model_kind(source)
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
