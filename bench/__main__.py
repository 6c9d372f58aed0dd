"""Run the benchmarks and write docs/benchmarks.md (machine, command, date, then one section each)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path

import click

from bench import quantization, verify

SECTIONS = {"verify": verify.run, "quantization": quantization.run}
OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


@click.command()
@click.option("--only", multiple=True, type=click.Choice(sorted(SECTIONS)), help="Run only these sections.")
@click.option("--out", type=click.Path(path_type=Path), default=OUT, show_default=True)
def main(only: tuple[str, ...], out: Path) -> None:
    """Run the benchmarks and write the report."""
    parts = [
        "# Benchmarks\n",
        "Ratios are measured side by side in one run (these machines are shared and noisy); absolute times are for scale only.\n",
        f"- machine: {machine()}",
        f"- command: `make bench` (`{' '.join([Path(sys.executable).name, '-m', 'bench', *sys.argv[1:]])}`)",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n",
    ]
    for name, fn in SECTIONS.items():
        if only and name not in only:
            continue
        click.echo(f"running {name} …", err=True)
        section = fn()
        click.echo(section)
        parts.append(section)
    out.write_text("\n".join(parts) + "\n")
    click.echo(f"wrote {out}", err=True)


if __name__ == "__main__":
    main()
