"""A bounded on-disk telemetry spool for when the broker is unreachable.

One small file per point (``{n:012d}.json``), written atomically, replayed oldest first with its
original timestamp and deleted only after the broker acknowledged it. Beyond ``max_points`` points
or ``max_bytes`` bytes of payload the oldest points are dropped, and a point the disk cannot take
(full, failing) is dropped too; ``dropped`` counts both, so the next telemetry point can say how many
were lost. A long outage or a full disk never stops the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from device_agent.fsutil import atomic_write

log = logging.getLogger("edge-agent")


class Spool:
    def __init__(self, directory: Path, max_points: int, max_bytes: int = 4 << 20) -> None:
        self.dir = directory
        self.max_points = max(1, max_points)
        self.max_bytes = max(1, max_bytes)
        self.dropped = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        for stray in self.dir.glob(".*.tmp"):  # a write cut short by power loss
            stray.unlink(missing_ok=True)
        self._sizes = {p: _size(p) for p in self._names()}  # path -> bytes, oldest first
        names = list(self._sizes)
        self._next = int(names[-1].stem) + 1 if names else 0

    def _names(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("*.json") if p.stem.isdigit())

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def size_bytes(self) -> int:
        return sum(self._sizes.values())

    def append(self, payload: bytes) -> bool:
        """Spool one point (dropping the oldest beyond the bounds); False when the disk refused it."""
        if len(payload) > self.max_bytes:
            self.dropped += 1
            return False
        self._make_room(len(payload))
        path = self.dir / f"{self._next:012d}.json"
        try:
            atomic_write(path, payload)
        except OSError as exc:
            self.dropped += 1
            log.warning("telemetry point dropped, the spool cannot take it: %s", exc.strerror)
            return False
        self._next += 1
        self._sizes[path] = len(payload)
        return True

    def _make_room(self, incoming: int) -> None:
        total = self.size_bytes
        while self._sizes and (len(self._sizes) >= self.max_points or total + incoming > self.max_bytes):
            old = next(iter(self._sizes))
            total -= self._sizes.pop(old)
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove spooled point %s: %s", old.name, exc.strerror)
            self.dropped += 1

    def replay(self, send: Callable[[bytes], None]) -> int:
        """Send points oldest first; stop at the first failure (it propagates). Returns the count sent."""
        sent = 0
        for path in list(self._sizes):
            try:
                payload = path.read_bytes()
            except FileNotFoundError:
                self._sizes.pop(path, None)
                continue
            send(payload)
            self._sizes.pop(path, None)
            path.unlink(missing_ok=True)
            sent += 1
        return sent


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
