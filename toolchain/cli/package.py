"""``edgetool package``: a model (.tflite/.onnx, or a Keras/SavedModel/.pt2 source converted first) as a signed,
reproducible bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from device_agent.bundle import read_bundle
from device_agent.fsutil import atomic_write
from toolchain.cli.common import MODEL, echo_summary, load_keys, options

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
DATA = click.Path(exists=True, path_type=Path)

# One option per field of toolchain.packaging.PackageOptions (keys, output and the model aside).
PACKAGE_OPTIONS = [
    click.option("--name", required=True, help="Bundle name, [a-z0-9-]."),
    click.option("--version", "version", required=True, help="Semantic version, e.g. 1.0.0."),
    click.option("--sequence", required=True, type=click.IntRange(min=1), help="Anti-rollback counter; must grow."),
    click.option(
        "--key",
        "keys",
        required=True,
        multiple=True,
        type=click.Path(exists=True),
        help="Signing key (repeat to co-sign).",
    ),
    click.option("--selftest-inputs", type=DATA, help=".npz/.npy inputs for the self-test."),
    click.option("--labels", type=FILE, help="Class labels, one per line."),
    click.option("--calibration", type=DATA, help=".npz/.npy data for drift references."),
    click.option("--report", type=FILE, help="Quantization report.json for provenance."),
    click.option("--source-model", type=DATA, help="Float model this was made from."),
    click.option(
        "--task",
        type=click.Choice(["classification", "regression", "none"]),
        help="Default: classification with --labels.",
    ),
    click.option("--description", default="", help="Free text for operators."),
    click.option("--selftest-samples", default=8, show_default=True, type=click.IntRange(1, 1024)),
    click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64)),
    click.option("--min-runtime-version", default="0.0.0", show_default=True),
    click.option("--min-agent-version", default="0.1.0", show_default=True),
    click.option("--arch", "architectures", multiple=True, help="Allowed architectures (repeat); default any."),
    click.option("--ram-bytes", type=click.IntRange(min=0), help="RAM requirement; default an estimate."),
    click.option(
        "--max-overhead",
        type=click.IntRange(min=0),
        help="Bytes the bundle may add to its model; default max(64 KiB, 10 % of the model). "
        "Over it, the self-test is made compact.",
    ),
    click.option("-o", "--output", type=click.Path(dir_okay=False), help="Default: NAME-VERSION.efb."),
]


SOURCE_OPTIONS = [
    click.option(
        "--format",
        "fmt",
        type=click.Choice(["tflite", "onnx"]),
        help="Device format a Keras/SavedModel/.pt2 source is converted to; default the --profile's runtime, "
        "else tflite.",
    ),
    click.option("--profile", help="Device profile (name or TOML file) whose runtime picks the default --format."),
]


@click.command()
@click.argument("model", type=MODEL)
@options([*PACKAGE_OPTIONS, *SOURCE_OPTIONS])
def package(
    model: Path,
    output: str | None,
    keys: tuple[str, ...],
    architectures: tuple[str, ...],
    fmt: str | None,
    profile: str | None,
    **kw: Any,
) -> None:
    """Package MODEL (.tflite, .onnx, or a .keras/.h5/SavedModel/.pt2 source) as a signed bundle.

    A source is first converted to --format (toolchain/convert.py) and the result run against the
    source in its own framework: every output within 1e-4 × max(1, |output|), else nothing is written.

    Reads the inputs and outputs from the runtime, runs the model on the self-test inputs (given,
    else the first calibration samples, else generated from the model's hash) to record the
    outputs a device must reproduce, and records drift references from --calibration.
    """
    from toolchain.package_source import package_any
    from toolchain.packaging import PackageOptions

    if fmt is None and profile is not None:
        from toolchain.profiles import load_profile

        fmt = load_profile(profile).runtime
    opts = PackageOptions(keys=load_keys(keys), architectures=tuple(architectures), **kw)
    data = package_any(model, opts, fmt or "tflite")
    out = output or f"{opts.name}-{opts.version}.efb"
    atomic_write(out, data)
    bundle = read_bundle(data)
    model_size = bundle.manifest.model.size
    click.echo(
        f"wrote {out} ({len(data)} bytes: the model's {model_size} + {len(data) - model_size}), "
        f"sha256 {bundle.manifest.model.sha256[:16]}…"
    )
    echo_summary(bundle)
    compact = bundle.manifest.selftest.compact if bundle.manifest.selftest else None
    if compact is not None and compact.inputs == "generated":
        click.echo(
            "warning: no real self-test sample fits the overhead bound: the device checks the model on inputs "
            "generated from a seed, which catches less (raise --max-overhead to keep real samples)"
        )


COMMANDS = [package]
