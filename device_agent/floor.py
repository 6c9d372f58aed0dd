"""The rollback floor's second copy: an append-only file of ``NAME SEQUENCE`` lines beside state.json.

The highest committed sequence per bundle name is what stops a validly signed old bundle from
coming back. state.json holds it, but a state file that is emptied, corrupted or rewritten by hand
must not lower it, so every commit first appends the new floor here (fsynced) and every boot takes
the maximum of this file, state.json and the active slot's manifest. Appending never rewrites what
was durable before (a last line without its newline, torn by a power cut, is ignored and cut before
the next append); the file is compacted atomically when
it grows past ``MAX_LINES``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from device_agent.fsutil import atomic_write, fsync_dir

MAX_LINES = 512  # compact (one line per name, atomically) beyond this
LINE_RE = re.compile(r"([A-Za-z0-9._-]{1,128}) ([0-9]{1,18})")


def merge_floors(*sources: Mapping[str, int]) -> dict[str, int]:
    """The highest sequence per name over every source."""
    out: dict[str, int] = {}
    for source in sources:
        for name, seq in source.items():
            out[name] = max(out.get(name, 0), seq)
    return out


class RollbackFloor:
    """The append-only floor file of one device home."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, int]:
        """Highest sequence per name; malformed lines (a torn append, damage) are skipped."""
        try:
            text = self.path.read_bytes().decode("ascii", errors="replace")
        except OSError:
            return {}
        floors: dict[str, int] = {}
        for line in text.split("\n")[:-1]:  # only whole lines: the last piece has no newline (a torn append)
            if m := LINE_RE.fullmatch(line.strip()):
                floors[m.group(1)] = max(floors.get(m.group(1), 0), int(m.group(2)))
        return floors

    def raise_to(self, floors: Mapping[str, int]) -> None:
        """Durably record ``floors`` (only the names whose floor goes up are appended).

        Raises:
            OSError: the file could not be written (the caller keeps the old floor).
        """
        current = self.read()
        lines = [f"{name} {seq}\n" for name, seq in sorted(floors.items()) if seq > current.get(name, 0)]
        if not lines:
            return
        created = not self.path.exists()
        self._drop_torn_tail()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(lines).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)
        if self._line_count() > MAX_LINES:
            merged = merge_floors(current, floors)
            atomic_write(self.path, "".join(f"{n} {s}\n" for n, s in sorted(merged.items())).encode("ascii"))

    def _drop_torn_tail(self) -> None:
        """Cut a last line without its newline (an append the power cut short, never read as a floor),
        so the next append does not extend it."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        if data and not data.endswith(b"\n"):
            os.truncate(self.path, data.rfind(b"\n") + 1)

    def _line_count(self) -> int:
        try:
            return self.path.read_bytes().count(b"\n")
        except OSError:
            return 0
