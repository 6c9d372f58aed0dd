"""``edgetool package``: a .tflite/.onnx model as a signed, reproducible bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from device_agent.bundle import read_bundle
from device_agent.fsutil import atomic_write
from toolchain.cli.common import echo_summary, load_keys, options

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


@click.command()
@click.argument("model", type=FILE)
@options(PACKAGE_OPTIONS)
def package(model: Path, output: str | None, keys: tuple[str, ...], architectures: tuple[str, ...], **kw: Any) -> None:
    """Package MODEL (.tflite or .onnx) as a signed bundle.

    Reads the inputs and outputs from the runtime, runs the model on the self-test inputs (given,
    else the first calibration samples, else generated from the model's hash) to record the
    outputs a device must reproduce, and records drift references from --calibration.
    """
    from toolchain.packaging import PackageOptions
    from toolchain.packaging import package as build

    opts = PackageOptions(keys=load_keys(keys), architectures=tuple(architectures), **kw)
    data = build(model, opts)
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
