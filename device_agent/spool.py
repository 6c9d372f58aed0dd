"""A bounded on-disk telemetry spool for when the broker is unreachable.

One small file per point (``{n:012d}.json``), written atomically, replayed oldest first with its
original timestamp and deleted only after the broker acknowledged it. Beyond ``max_points`` the
oldest points are dropped (and counted), so a long outage cannot fill the device's storage.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from device_agent.fsutil import atomic_write


class Spool:
    def __init__(self, directory: Path, max_points: int) -> None:
        self.dir = directory
        self.max_points = max(1, max_points)
        self.dropped = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        for stray in self.dir.glob(".*.tmp"):  # a write cut short by power loss
            stray.unlink(missing_ok=True)
        names = self._names()
        self._next = int(names[-1].stem) + 1 if names else 0

    def _names(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("*.json") if p.stem.isdigit())

    def __len__(self) -> int:
        return len(self._names())

    def append(self, payload: bytes) -> None:
        atomic_write(self.dir / f"{self._next:012d}.json", payload)
        self._next += 1
        names = self._names()
        for old in names[: max(0, len(names) - self.max_points)]:
            old.unlink(missing_ok=True)
            self.dropped += 1

    def replay(self, send: Callable[[bytes], None]) -> int:
        """Send points oldest first; stop at the first failure (it propagates). Returns the count sent."""
        sent = 0
        for path in self._names():
            try:
                payload = path.read_bytes()
            except FileNotFoundError:
                continue
            send(payload)
            path.unlink(missing_ok=True)
            sent += 1
        return sent
