"""The work behind ``edgetool quantize`` and ``evaluate``: a typed request in, a report out.

A ``QuantizeRequest`` holds what the engineer asked for; options that do not apply to its format
and mode are refused here, never silently ignored. The result is the report document (the future
``report.json``) and its variants. Progress reaches the caller through ``status`` (a context
manager around long steps) and ``log`` (one line per auto-mode trial); both default to silence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain import report
from toolchain.errors import QuantizeError
from toolchain.evaluate import EvalOptions
from toolchain.evaluate import evaluate as evaluate_models
from toolchain.fidelity import Task
from toolchain.fielddata import field_data
from toolchain.quantize import (
    DEFAULT_SAMPLES,
    ONNX_MODES,
    TFLITE_MODES,
    Calibrate,
    IOType,
    OnnxOptions,
    QuantizeOptions,
    TFLiteOptions,
    settings_dict,
)
from toolchain.quantize import quantize as quantize_model

Status = Callable[[str], AbstractContextManager[object]]
Log = Callable[[str], None]
Outcome = tuple[dict[str, Any], list[report.Variant]]  # the report document and its variants


def _quiet(_message: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class QuantizeRequest:
    """What ``edgetool quantize`` was asked for, before it is checked against the format and mode."""

    model: Path
    format: str  # tflite | onnx
    mode: str  # a mode of the format, or auto
    output: Path
    calibration: Path | None = None
    samples: int = DEFAULT_SAMPLES
    io: IOType | None = None  # TFLite int8 only; default int8
    per_channel: bool = False  # ONNX only
    calibrate: Calibrate | None = None  # ONNX int8 (and auto) only; default minmax
    eval_data: Path | None = None  # evaluation .npz; auto needs it
    max_accuracy_drop: float | None = None  # auto only, in pp
    min_cosine: float | None = None  # auto only: the worst output's cosine with the float model
    max_float_layers: int | None = None  # auto only: most layers kept in float (default MAX_FLOAT_LAYERS)
    task: Task = "auto"  # classification | other | auto (from the output shapes)


def _refuse_unused(req: QuantizeRequest, mode: str) -> None:
    """Options that do not apply to this format/mode are an error, never silently ignored.

    Raises:
        QuantizeError: naming the option and where it applies.
    """
    fmt = req.format
    applies = {
        "--io": (req.io is not None, fmt == "tflite" and mode == "int8", "--format tflite --mode int8"),
        "--per-channel": (req.per_channel, fmt == "onnx", "--format onnx"),
        "--calibrate": (req.calibrate is not None, fmt == "onnx" and mode in ("int8", "auto"), "ONNX int8"),
        "--max-float-layers": (req.max_float_layers is not None, mode == "auto", "--mode auto"),
        "--min-cosine": (req.min_cosine is not None, mode == "auto", "--mode auto"),
        "--max-accuracy-drop": (req.max_accuracy_drop is not None, mode == "auto", "--mode auto"),
    }
    for option, (given, valid, where) in applies.items():
        if given and not valid:
            raise QuantizeError(f"{option} applies to {where} only")


def quantize_options(req: QuantizeRequest) -> QuantizeOptions:
    """The backend options for a fixed mode.

    Raises:
        QuantizeError: a mode the format lacks, or an option that does not apply.
    """
    modes = TFLITE_MODES if req.format == "tflite" else ONNX_MODES
    if req.mode not in modes:
        raise QuantizeError(f"--format {req.format} has no mode {req.mode!r}; use one of {', '.join(modes)} or auto")
    _refuse_unused(req, req.mode)
    if req.format == "tflite":
        return TFLiteOptions(req.mode, io=req.io or "int8", samples=req.samples)  # type: ignore[arg-type]
    calibrate = req.calibrate or "minmax"
    return OnnxOptions(req.mode, per_channel=req.per_channel, calibrate=calibrate, samples=req.samples)  # type: ignore[arg-type]


def quantize(req: QuantizeRequest, *, measure: bool = True, status: Status = _quiet, log: Log | None = None) -> Outcome:
    """Run the request: auto mode (``measure``: also time every variant) or one fixed mode.

    Raises:
        QuantizeError, ModelError, DataError: the request cannot be carried out.
    """
    if req.mode == "auto":
        return _auto(req, measure, log)
    return _fixed(req, status)


def _fixed(req: QuantizeRequest, status: Status) -> Outcome:
    """Quantize (and evaluate with ``eval_data``)."""
    options = quantize_options(req)
    with status(f"quantizing {req.model.name} ({req.format} {req.mode})…"):
        result = quantize_model(req.model, req.output, options, req.calibration, req.eval_data)
    details: dict[str, Any] = {
        "mode": req.mode,
        "settings": result.settings(),
        "calibration_samples": result.calibration_samples,
        "quantize_seconds": result.seconds,
        "output": str(req.output),
        "bytes": result.bytes,
        "tools": result.tools,
    }
    if (field := field_data(req.calibration)) is not None:
        details["field_data"] = field  # the calibration set is a capture export
    variants: list[report.Variant] = []
    if req.eval_data is not None:
        with status("evaluating…"):
            ev = evaluate_models(req.output, req.model, req.eval_data, EvalOptions(layers=0, task=req.task))
        details["evaluation"] = ev.to_dict()
        variants = report.from_evaluation(req.mode, ev, result.seconds)
    return report.document(str(req.model), req.format, variants, details), variants


def _auto(req: QuantizeRequest, measure: bool, log: Log | None) -> Outcome:
    """Auto mode: the report document (with the reason) and every variant tried."""
    from toolchain.quantize.auto import MAX_FLOAT_LAYERS, AutoOptions, auto_quantize

    eval_data, calibration = req.eval_data, req.calibration
    bound = req.max_accuracy_drop if req.min_cosine is None else req.min_cosine
    if eval_data is None or bound is None or calibration is None:
        needed = {"--eval": eval_data, "--max-accuracy-drop or --min-cosine": bound, "--calibration": calibration}
        raise QuantizeError(f"--mode auto needs {', '.join(o for o, v in needed.items() if v is None)}")
    if req.io is not None:
        raise QuantizeError("--io does not apply to --mode auto (its models keep float input and output)")
    _refuse_unused(req, "auto")
    opts = AutoOptions(
        format=req.format,  # type: ignore[arg-type]
        max_drop_pp=req.max_accuracy_drop,
        min_cosine=req.min_cosine,
        task=req.task,
        max_float_layers=MAX_FLOAT_LAYERS if req.max_float_layers is None else req.max_float_layers,
        eval_data=eval_data,
        calibration=calibration,
        samples=req.samples,
        calibrate=req.calibrate or "minmax",
        latency_runs=30 if measure else 0,
    )
    result = auto_quantize(req.model, req.output, opts, log=log)
    details = {
        "mode": "auto",
        "max_accuracy_drop_pp": opts.max_drop_pp,
        "min_cosine": opts.min_cosine,
        "reason": result.reason(),
        "settings": settings_dict(result.chosen.options) if result.chosen else None,
        "ranked_layers": result.ranked_layers,
        "output": str(req.output),
    }
    variants = report.from_auto(result)
    return report.document(str(req.model), req.format, variants, details), variants


def evaluate(candidate: Path, reference: Path, data: Path, opts: EvalOptions, status: Status = _quiet) -> Outcome:
    """Compare ``candidate`` with its float ``reference`` on ``data``; the report has both as variants.

    Raises:
        ModelError, DataError, RuntimeLoadError: as ``toolchain.evaluate.evaluate``.
    """
    with status(f"evaluating {candidate.name}…"):
        ev = evaluate_models(candidate, reference, data, opts)
    variants = report.from_evaluation(candidate.name, ev)
    details: dict[str, Any] = {"evaluation": ev.to_dict()}
    if (field := field_data(data)) is not None:
        details["field_data"] = field  # the evaluation data is a capture export
    doc = report.document(str(reference), ev.candidate.runtime, variants, details)
    return doc, variants
