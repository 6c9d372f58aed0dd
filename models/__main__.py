"""``python -m models build NAME --out DIR`` and ``python -m models list``."""

from __future__ import annotations

from pathlib import Path

import click

from models import RECIPES, build


@click.group()
def main() -> None:
    """Build the reference models (offline, deterministic)."""


@main.command("list")
def list_() -> None:
    """List the recipes."""
    for name in sorted(RECIPES):
        click.echo(name)


@main.command("build")
@click.argument("name", type=click.Choice(sorted(RECIPES)))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
def build_cmd(name: str, out: Path) -> None:
    """Build NAME into OUT: model.keras, model.tflite, model.onnx, calib.npz, eval.npz, labels.txt."""
    for role, path in build(name, out).items():
        click.echo(f"{role:>12}  {path}")


if __name__ == "__main__":
    main()
