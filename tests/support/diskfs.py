"""A small real filesystem for disk-full tests: a tmpfs mounted for one test, and a filler file.

Mounting needs root (tests run as root here and in CI). Where it is impossible the fixture skips
with the reason, except under ``EDGEFLEET_CI=1`` (set by .ci/run), where it fails: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHUNK = 1 << 16  # bytes per filler write


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"4m"``) on ``path`` for the duration; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    why = ""
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    elif shutil.which("mount") is None:
        why = "no mount command"
    else:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        why = done.stderr.strip() if done.returncode else ""
    if why:
        if os.environ.get("EDGEFLEET_CI") == "1":
            pytest.fail(f"disk-full tests must run in CI, but a tmpfs cannot be mounted: {why}")
        pytest.skip(f"cannot mount a tmpfs: {why}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill(path: Path, leave: int, name: str = "filler") -> Path:
    """Write a filler file on ``path``'s filesystem so that about ``leave`` bytes stay free."""
    filler = path / name
    todo = max(0, free_bytes(path) - leave)
    block = b"\0" * CHUNK
    with filler.open("ab", buffering=0) as fh:
        while todo > 0:
            try:
                todo -= fh.write(block[: min(CHUNK, todo)])
            except OSError:
                break  # the filesystem is full: as full as it gets
    return filler
