"""Run the benchmarks and update docs/benchmarks.md.

Each section is stored between ``<!-- bench:NAME -->`` markers with the machine, command and date
it was measured with, so ``--only NAME`` refreshes one section and keeps the others as they were.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path

import click

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by `make bench` (`python -m bench`; `python -m bench --only NAME` refreshes one section).
Ratios are measured side by side in one run, because these machines are shared and noisy;
absolute times are for scale only. Each section names the machine and date it was measured on.
"""


def sections() -> dict[str, Callable[[], str]]:
    from bench import (
        access,
        agent,
        bundles,
        capture,
        cluster,
        console,
        console_capture,
        fleet,
        gates,
        ingest,
        powercut,
        quantization,
        verify,
    )

    return {
        "verify": verify.run,
        "agent": agent.run,
        "powercut": powercut.run,
        "quantization": quantization.run,
        "fleet": fleet.run,
        "access": access.run,
        "gates": gates.run,
        "bundles": bundles.run,
        "ingest": ingest.run,
        "cluster": cluster.run,
        "console": console.run,
        "capture": capture.run,
        "console-capture": console_capture.run,
    }


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
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {system}"


def stamp(name: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"_Measured {when} on {machine()} with `python -m bench --only {name}`._\n"


def merge(existing: str, name: str, body: str) -> str:
    block = f"<!-- bench:{name} -->\n{body.rstrip()}\n\n{stamp(name)}<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(existing):
        return pattern.sub(lambda _: block, existing)
    return existing.rstrip() + "\n\n" + block + "\n"


@click.command()
@click.option("--only", multiple=True, help="Run only these sections (default: all).")
@click.option("--out", type=click.Path(path_type=Path), default=OUT, show_default=True)
def main(only: tuple[str, ...], out: Path) -> None:
    """Run the benchmarks and update the report."""
    available = sections()
    if unknown := set(only) - set(available):
        raise click.UsageError(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(available)}")
    text = out.read_text() if out.exists() else HEADER
    if not text.startswith("# Benchmarks"):
        text = HEADER
    for name, fn in available.items():
        if only and name not in only:
            continue
        click.echo(f"running {name} …", err=True)
        body = fn()
        click.echo(body)
        text = merge(text, name, body)
        out.write_text(text)  # after every section, so a long run keeps what it measured
    click.echo(f"wrote {out}", err=True)


if __name__ == "__main__":
    sys.exit(main())
