"""``edgetool convert``, ``quantize`` and ``evaluate``: from a trained model to a measured device model.

Heavy modules (TensorFlow, onnxruntime's quantizer) are imported inside the commands, so
``edgetool --help`` and ``edgetool verify`` stay light.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from toolchain import report
from toolchain.cli.common import DATA, MODEL, echo_json
from toolchain.quantize import ONNX_MODES, TFLITE_MODES

if TYPE_CHECKING:
    from toolchain.workflows import Outcome

REPORT_DIR = click.Path(file_okay=False, path_type=Path)
OUTPUT = click.Path(dir_okay=False, path_type=Path)
TASK = click.option(
    "--task",
    type=click.Choice(["auto", "classification", "other"]),
    default="auto",
    show_default=True,
    help="classification: top-1 measures apply; other: cosine/SQNR only; auto: a [batch, classes] first output.",
)


@contextlib.contextmanager
def busy(message: str) -> Iterator[None]:
    """A spinner on stderr while long work runs (silent when stderr is not a terminal)."""
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def emit(outcome: Outcome, report_dir: Path | None, as_json: bool, title: str) -> None:
    """Print the report (JSON, or a table plus details) and write the report files when asked."""
    doc, variants = outcome
    if report_dir is not None:
        paths = report.write(report_dir, doc, variants)
        click.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)
    if as_json:
        echo_json(doc)
        return
    if variants:
        report.print_table(variants, title)
    for line in report.detail_lines(doc):
        click.echo(line)
    sys.stdout.flush()


@click.command()
@click.argument("model", type=MODEL)
@click.option("--to", "target", required=True, type=click.Choice(["tflite", "onnx"]), help="Output format.")
@click.option("-o", "--output", required=True, type=OUTPUT)
@click.option("--opset", type=click.IntRange(9, 21), help="ONNX opset (default 17; 18 from a .pt2).")
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    help="NAME=D,D,...: fix an input's dynamic dims (ONNX → TFLite needs fixed ones), e.g. x=1,3,96,160.",
)
def convert(model: Path, target: str, output: Path, opset: int | None, input_shapes: tuple[str, ...]) -> None:
    """Convert MODEL (.keras, .h5, SavedModel directory, .onnx, .tflite, PyTorch .pt2) to float32 TFLite or ONNX.

    ONNX → TFLite goes through onnx2tf and is checked against onnxruntime (max abs error ≤ 1e-4,
    scaled by the outputs' magnitude); .pt2 (torch.export.save) → ONNX through torch.onnx, checked
    against PyTorch (≤ 1e-5). Ops the target cannot run are listed in the error (for TFLite: ops
    that would need SELECT_TF_OPS, which device LiteRT builds do not ship).
    """
    from toolchain.convert import convert as run
    from toolchain.convert import parse_shapes

    result = run(model, target, output, opset, parse_shapes(input_shapes))
    error = f", max abs error vs onnxruntime {result.max_abs_error:.3g}" if result.max_abs_error is not None else ""
    tools = f", with {', '.join(f'{k} {v}' for k, v in result.tools.items())}" if result.tools else ""
    click.echo(f"wrote {result.output} ({result.bytes} bytes, {result.target} from {result.source_kind}{error}{tools})")


@click.command()
@click.argument("model", type=MODEL)
@click.option("--format", "fmt", required=True, type=click.Choice(["tflite", "onnx"]), help="Output format.")
@click.option(
    "--mode",
    required=True,
    type=click.Choice(sorted({*TFLITE_MODES, *ONNX_MODES, "auto"})),
    help="tflite: float16|dynamic|int8|int16x8|weight-only; onnx: dynamic|int8 (static QDQ); auto: search.",
)
@click.option("--calibration", type=DATA, help="Calibration .npz (x, or one array per input), .npy, or .npy dir.")
@click.option("-o", "--output", required=True, type=OUTPUT)
@click.option("--samples", type=click.IntRange(min=1), default=200, show_default=True, help="Calibration samples.")
@click.option(
    "--io", type=click.Choice(["int8", "uint8", "float"]), help="TFLite int8 only: input/output type (default int8)."
)
@click.option("--per-channel", is_flag=True, help="ONNX: per-channel weight scales.")
@click.option(
    "--calibrate",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    help="ONNX int8 only: activation range method (default minmax).",
)
@click.option("--eval", "eval_data", type=DATA, help="Evaluation .npz (x, y): measure the result (auto: required).")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), help="Auto: allowed top-1 drop in pp (classifiers).")
@click.option(
    "--min-cosine", type=click.FloatRange(0, 1), help="Auto: lowest allowed cosine of the worst output (any task)."
)
@click.option("--max-float-layers", type=click.IntRange(min=0), help="Auto: most layers kept in float (default 8).")
@TASK
@click.option("--report", "report_dir", type=REPORT_DIR, help="Write report.json, report.md and report.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def quantize(*, model: Path, fmt: str, report_dir: Path | None, as_json: bool, **kw: Any) -> None:
    """Quantize MODEL and write OUTPUT; with --eval, measure what it cost.

    TFLite: the TFLite converter for Keras/SavedModel, else the AI Edge quantizer (after onnx2tf or
    torch.onnx; dynamic dims from the first calibration sample). ONNX: .onnx, or converted first.
    --mode auto tries int8, int8 with the worst layers in float, then wider modes; it keeps the first
    within --max-accuracy-drop (classifiers) and/or --min-cosine (the worst output's cosine with
    float), and needs --eval and --calibration. Every result is loaded and run in its device runtime
    before it is written; a variant with an output below cosine 0.9 is flagged with a warning.
    """
    from toolchain import workflows

    request = workflows.QuantizeRequest(model=model, format=fmt, **kw)
    outcome = workflows.quantize(
        request,
        measure=bool(report_dir or not as_json),
        status=busy,
        log=lambda msg: click.echo(f"  tried {msg}", err=True),
    )
    emit(outcome, report_dir, as_json, f"{model.name} → {fmt}")


@click.command()
@click.argument("candidate", type=MODEL)
@click.option("--reference", required=True, type=MODEL, help="The float model (.keras/.h5/SavedModel or same format).")
@click.option("--data", required=True, type=DATA, help="Evaluation .npz: x (or one array per input), y labels.")
@click.option("--samples", type=click.IntRange(min=1), help="Evaluate on the first N samples only.")
@click.option("--runs", default=50, show_default=True, type=click.IntRange(min=0), help="Timed runs; 0 skips.")
@click.option("--layers", default=8, show_default=True, type=click.IntRange(min=0), help="Per-layer rows; 0 skips.")
@click.option("--calibration", type=DATA, help="Data for the per-layer debugger (default: the evaluation data).")
@TASK
@click.option("--report", "report_dir", type=REPORT_DIR, help="Write report.json, report.md and report.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON.")
def evaluate(candidate: Path, reference: Path, data: Path, report_dir: Path | None, as_json: bool, **kw: Any) -> None:
    """Compare CANDIDATE (.tflite/.onnx) with its float REFERENCE in the device runtime.

    Reports per output max/mean absolute error, cosine similarity and SQNR (dB); for a
    classifier also top-1 accuracy and its delta (with labels) and top-1 agreement; size, host
    latency p50/p95 (one thread) and peak memory, and a table of the layers that lose most.
    An output below cosine 0.9 gets a warning line.
    """
    from toolchain import workflows
    from toolchain.evaluate import EvalOptions

    opts = EvalOptions(latency_runs=kw.pop("runs"), **kw)
    outcome = workflows.evaluate(candidate, reference, data, opts, status=busy)
    emit(outcome, report_dir, as_json, f"{candidate.name} vs {reference.name}")


COMMANDS = [convert, quantize, evaluate]
