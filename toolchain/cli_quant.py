"""edgetool's model verbs: convert, quantize, evaluate, profiles, check.

Thin commands: parse, call the library, print. Heavy modules (TensorFlow, onnxruntime's quantizer)
are imported inside the commands, so ``edgetool --help`` and ``edgetool verify`` stay light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from toolchain.errors import QuantizeError
from toolchain.quantize import ONNX_MODES, TFLITE_MODES

MODEL = click.Path(exists=True, path_type=Path)
DATA = click.Path(exists=False, path_type=Path)


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


@click.command()
@click.argument("model", type=MODEL)
@click.option("--to", "target", required=True, type=click.Choice(["tflite", "onnx"]), help="Output format.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--opset", default=17, show_default=True, type=click.IntRange(9, 21), help="ONNX opset.")
def convert(model: Path, target: str, output: Path, opset: int) -> None:
    """Convert MODEL (.keras, .h5, SavedModel directory, .onnx) to float32 TFLite or ONNX.

    Ops the target cannot run are listed in the error (for TFLite: ops that would need
    SELECT_TF_OPS, which device LiteRT builds do not ship).
    """
    from toolchain.convert import convert as run

    result = run(model, target, output, opset)
    click.echo(f"wrote {result.output} ({result.bytes} bytes, {result.target} from {result.source_kind})")


@click.command()
@click.argument("model", type=MODEL)
@click.option("--format", "fmt", required=True, type=click.Choice(["tflite", "onnx"]), help="Output format.")
@click.option(
    "--mode",
    required=True,
    type=click.Choice(sorted({*TFLITE_MODES, *ONNX_MODES, "auto"})),
    help="tflite: float16|dynamic|int8|int16x8; onnx: dynamic|int8 (static QDQ); auto: search within a bound.",
)
@click.option("--calibration", type=DATA, help="Calibration .npz (x, or one array per input), .npy, or .npy dir.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--samples", type=click.IntRange(min=1), default=200, show_default=True, help="Calibration samples.")
@click.option("--io", type=click.Choice(["int8", "uint8", "float"]),
              help="TFLite int8 only: input/output type (default int8).")  # fmt: skip
@click.option("--per-channel", is_flag=True, help="ONNX: per-channel weight scales.")
@click.option("--calibrate", type=click.Choice(["minmax", "entropy", "percentile"]),
              help="ONNX int8 only: activation range method (default minmax).")  # fmt: skip
@click.option("--eval", "eval_data", type=DATA, help="Evaluation .npz (x, y): measure the result (auto: required).")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), help="Auto: allowed top-1 drop in pp.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.json, report.md and report.png here.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def quantize(
    *, model: Path, fmt: str, mode: str, output: Path, report_dir: Path | None, as_json: bool, **kw: Any
) -> None:
    """Quantize MODEL and write OUTPUT; with --eval, measure what it cost.

    TFLite needs the float source (.keras, .h5, SavedModel). ONNX accepts .onnx or converts the
    source first. --mode auto tries int8, then int8 with the worst layers kept in float, then wider
    modes, and keeps the first within --max-accuracy-drop (needs --eval and --calibration).
    """
    from toolchain import commands

    if mode == "auto":
        doc, variants = commands.run_auto(model, fmt, output, kw, measure=bool(report_dir or not as_json))
    else:
        doc, variants = commands.run_quantize(model, fmt, mode, output, kw)
    commands.emit(doc, variants, report_dir, as_json, f"{model.name} → {fmt}")


@click.command()
@click.argument("candidate", type=MODEL)
@click.option("--reference", required=True, type=MODEL, help="The float model (.keras/.h5/SavedModel or same format).")
@click.option("--data", required=True, type=DATA, help="Evaluation .npz: x (or one array per input), y labels.")
@click.option("--samples", type=click.IntRange(min=1), help="Evaluate on the first N samples only.")
@click.option("--runs", default=50, show_default=True, type=click.IntRange(min=0), help="Timed runs; 0 skips.")
@click.option("--layers", default=8, show_default=True, type=click.IntRange(min=0), help="Per-layer rows; 0 skips.")
@click.option("--calibration", type=DATA, help="Data for the per-layer debugger (default: the evaluation data).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write report.json, report.md and report.png here.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON.")
def evaluate(candidate: Path, reference: Path, data: Path, report_dir: Path | None, as_json: bool, **kw: Any) -> None:
    """Compare CANDIDATE (.tflite/.onnx) with its float REFERENCE in the device runtime.

    Reports top-1 accuracy and its delta (with labels), top-1 agreement, per-output max/mean
    absolute error and cosine similarity, size, host latency p50/p95 (one thread) and peak
    memory, and a table of the layers that lose most.
    """
    from toolchain import commands

    doc, variants = commands.run_evaluate(candidate, reference, data, kw)
    commands.emit(doc, variants, report_dir, as_json, f"{candidate.name} vs {reference.name}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def profiles(as_json: bool) -> None:
    """List the built-in device profiles (use --profile FILE.toml for your own)."""
    from toolchain.profiles import builtin_profiles

    found = builtin_profiles()
    if as_json:
        _echo_json({name: p.to_dict() for name, p in found.items()})
        return
    for p in found.values():
        click.echo(
            f"{p.name:<18} {p.runtime} {p.runtime_version:<8} {p.arch:<8} RAM {p.ram_bytes >> 20} MiB, "
            f"flash {p.flash_bytes >> 20} MiB, {p.latency_budget_ms:g} ms budget, ×{p.latency_factor:g} vs host"
        )
        click.echo(f"{'':<18} {p.description}")


@click.command()
@click.argument("target", type=MODEL)
@click.option("--profile", "profile_name", required=True, help="Built-in profile name or a .toml file.")
@click.option("--runs", default=30, show_default=True, type=click.IntRange(min=1), help="Timed runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(target: Path, profile_name: str, runs: int, as_json: bool) -> None:
    """Check a bundle (.efb) or model (.tflite/.onnx) against a device profile.

    Exits 0 when it fits, 1 when it does not; prints every check with its numbers.
    """
    from toolchain.check import check as run
    from toolchain.profiles import load_profile

    profile = load_profile(profile_name)
    result = run(target, profile, runs)
    if as_json:
        _echo_json(result.to_dict())
    else:
        for row in result.rows:
            click.echo(f"{'ok' if row.ok else 'FAIL':>4}  {row.check:<16} {row.value}  (limit {row.limit})")
        click.echo(f"      ops ({len(result.ops)}): {', '.join(result.ops)}")
        click.echo(f"{target.name} {'fits' if result.fits else 'does not fit'} {profile.name}")
    if not result.fits:
        raise SystemExit(1)


COMMANDS = [convert, quantize, evaluate, profiles, check]
__all__ = ["COMMANDS", "QuantizeError"]
