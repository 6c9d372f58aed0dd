"""Child processes for end-to-end tests: the project's CLIs as real subprocesses, each in a process
group of its own and always stopped; and a /proc view to prove nothing was left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


@contextmanager
def background(argv: list[str], log: Path, stop_signal: int = signal.SIGTERM) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` (a console script of this venv, e.g. ``fleetctl``) with output to ``log``; on exit
    send ``stop_signal`` to its group, wait up to 30 s, then SIGKILL the group."""
    with log.open("ab") as out:
        proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdout=out, stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc, stop_signal)


def stop_group(proc: subprocess.Popen[bytes], sig: int, timeout: float = 30.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):  # then cold
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Warm stop of one child (SIGTERM), cold (SIGKILL) after ``timeout``; nothing if it has ended."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """``kill -9``: the child gets no chance to clean up (a power cut, the OOM killer)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a live process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (children, grandchildren, …)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = st[1]
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return {pid for pid in found if alive(pid)}


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (e.g. a test's unique temporary directory)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and alive(int(entry.name)):
            out.append(f"{entry.name}: {cmdline[:200]}")
    return out
