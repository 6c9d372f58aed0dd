"""The work behind edgetool's quantize and evaluate commands: build options, run, shape a report.

Kept out of the click module so the commands stay thin and this stays testable without click.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from toolchain import report
from toolchain.errors import QuantizeError
from toolchain.quantize import (
    ONNX_MODES,
    TFLITE_MODES,
    OnnxOptions,
    QuantizeOptions,
    TFLiteOptions,
    settings_dict,
)


@contextlib.contextmanager
def busy(message: str) -> Iterator[None]:
    """A spinner on stderr while long work runs (silent when stderr is not a terminal)."""
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def _refuse_unused(fmt: str, mode: str, kw: dict[str, Any]) -> None:
    """Options that do not apply to this format/mode are an error, never silently ignored.

    Raises:
        QuantizeError: naming the option and where it applies.
    """
    applies = {
        "--io": (kw["io"] is not None, fmt == "tflite" and mode == "int8", "--format tflite --mode int8"),
        "--per-channel": (kw["per_channel"], fmt == "onnx", "--format onnx"),
        "--calibrate": (kw["calibrate"] is not None, fmt == "onnx" and mode in ("int8", "auto"), "ONNX int8"),
    }
    for option, (given, valid, where) in applies.items():
        if given and not valid:
            raise QuantizeError(f"{option} applies to {where} only")


def _options(fmt: str, mode: str, kw: dict[str, Any]) -> QuantizeOptions:
    modes = TFLITE_MODES if fmt == "tflite" else ONNX_MODES
    if mode not in modes:
        raise QuantizeError(f"--format {fmt} has no mode {mode!r}; use one of {', '.join(modes)} or auto")
    _refuse_unused(fmt, mode, kw)
    if fmt == "tflite":
        return TFLiteOptions(mode, io=kw["io"] or "int8", samples=kw["samples"])  # type: ignore[arg-type]
    calibrate = kw["calibrate"] or "minmax"
    return OnnxOptions(mode, per_channel=kw["per_channel"], calibrate=calibrate, samples=kw["samples"])  # type: ignore[arg-type]


def run_quantize(
    model: Path, fmt: str, mode: str, output: Path, kw: dict[str, Any]
) -> tuple[dict[str, Any], list[report.Variant]]:
    """Quantize (and evaluate with --eval); returns the report document and its variants."""
    from toolchain.quantize import quantize

    options = _options(fmt, mode, kw)
    with busy(f"quantizing {model.name} ({fmt} {mode})…"):
        result = quantize(model, output, options, kw["calibration"])
    details: dict[str, Any] = {
        "mode": mode,
        "settings": result.settings(),
        "calibration_samples": result.calibration_samples,
        "quantize_seconds": result.seconds,
        "output": str(output),
        "bytes": result.bytes,
    }
    variants: list[report.Variant] = []
    if kw["eval_data"] is not None:
        from toolchain.evaluate import EvalOptions, evaluate

        with busy("evaluating…"):
            ev = evaluate(output, model, kw["eval_data"], EvalOptions(layers=0))
        details["evaluation"] = ev.to_dict()
        variants = report.from_evaluation(mode, ev, result.seconds)
    return report.document(str(model), fmt, variants, details), variants


def run_auto(
    model: Path, fmt: str, output: Path, kw: dict[str, Any], measure: bool
) -> tuple[dict[str, Any], list[report.Variant]]:
    """Auto mode; returns the report document (with the reason) and every variant tried."""
    from toolchain.quantize.auto import AutoOptions, auto_quantize

    missing = [opt for opt, key in (("--eval", "eval_data"), ("--max-accuracy-drop", "max_accuracy_drop"),
                                     ("--calibration", "calibration")) if kw[key] is None]  # fmt: skip
    if missing:
        raise QuantizeError(f"--mode auto needs {', '.join(missing)}")
    if kw["io"] is not None:
        raise QuantizeError("--io does not apply to --mode auto (its models keep float input and output)")
    _refuse_unused(fmt, "auto", kw)
    opts = AutoOptions(
        format=fmt,  # type: ignore[arg-type]
        max_drop_pp=kw["max_accuracy_drop"],
        eval_data=kw["eval_data"],
        calibration=kw["calibration"],
        samples=kw["samples"],
        calibrate=kw["calibrate"] or "minmax",
        latency_runs=30 if measure else 0,
    )
    result = auto_quantize(model, output, opts, log=lambda msg: click.echo(f"  tried {msg}", err=True))
    chosen = result.chosen
    details = {
        "mode": "auto",
        "max_accuracy_drop_pp": opts.max_drop_pp,
        "reason": result.reason(opts.max_drop_pp),
        "settings": settings_dict(chosen.options) if chosen else None,
        "ranked_layers": result.ranked_layers,
        "output": str(output),
    }
    variants = report.from_auto(result)
    return report.document(str(model), fmt, variants, details), variants


def run_evaluate(
    candidate: Path, reference: Path, data: Path, kw: dict[str, Any]
) -> tuple[dict[str, Any], list[report.Variant]]:
    from toolchain.evaluate import EvalOptions, evaluate

    opts = EvalOptions(samples=kw["samples"], latency_runs=kw["runs"], layers=kw["layers"],
                       calibration=kw["calibration"])  # fmt: skip
    with busy(f"evaluating {candidate.name}…"):
        ev = evaluate(candidate, reference, data, opts)
    variants = report.from_evaluation(candidate.name, ev)
    doc = report.document(str(reference), ev.candidate.runtime, variants, {"evaluation": ev.to_dict()})
    return doc, variants


def emit(
    doc: dict[str, Any], variants: list[report.Variant], report_dir: Path | None, as_json: bool, title: str
) -> None:
    """Print the report (JSON or a table plus details) and write the report files when asked."""
    import json

    if report_dir is not None:
        paths = report.write(report_dir, doc, variants)
        click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return
    if variants:
        report.print_table(variants, title)
    ev = doc.get("evaluation")
    if isinstance(ev, dict):
        _print_evaluation(ev)
    if doc.get("reason"):
        click.echo(doc["reason"])
    elif doc.get("output"):
        click.echo(f"wrote {doc['output']} ({doc.get('bytes')} bytes)")
    sys.stdout.flush()


def _print_evaluation(ev: dict[str, Any]) -> None:
    for out in ev["outputs"]:
        click.echo(
            f"output {out['name']}: max |err| {out['max_abs_error']:.4g}, mean |err| {out['mean_abs_error']:.4g}, "
            f"cosine {out['cosine']:.6f}"
        )
    if ev.get("layers"):
        click.echo(f"layers that lose most ({ev['layer_note']}):")
        for row in ev["layers"]:
            metric = row.get("sqnr_db", row.get("mse"))
            click.echo(f"  {row['layer']:<24} {metric:>12.4g}  {row['tensor']}")
    elif ev.get("layer_note"):
        click.echo(ev["layer_note"])
