"""The device's capture store: one ``.sample`` file per sample under ``HOME/capture/samples``, bounded in bytes
and in count. A new sample first makes room by dropping the oldest ones (counted in ``dropped``), so the
store never holds more than its bounds, even for an instant. Files are written atomically; a sample
leaves the store only when dropped for room or once the fleet manager confirmed it (``remove``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from device_agent.fsutil import atomic_write

log = logging.getLogger("edge-agent")
SUFFIX = ".sample"  # device_agent.capture.npz.write_sample


class CaptureStore:
    """Samples by name (names sort oldest first); thread-safe."""

    def __init__(self, root: Path, max_bytes: int, max_count: int) -> None:
        self.root, self.max_bytes, self.max_count = root, max_bytes, max_count
        self.dropped = 0  # samples dropped to make room (since the agent started)
        self.errors = 0  # samples lost to I/O errors (a full disk)
        self.peak_bytes = 0  # the most the store held at once (since the agent started)
        self._lock = threading.Lock()
        self._files: OrderedDict[str, int] = OrderedDict()  # name -> bytes, oldest first
        self._bytes = 0
        self._scan()

    def _scan(self) -> None:
        try:
            entries = sorted(p for p in self.root.iterdir() if p.suffix == SUFFIX and not p.name.startswith("."))
        except FileNotFoundError:
            return
        for path in entries:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            self._files[path.name] = size
            self._bytes += size
        self._make_room(0)  # bounds may have shrunk since the last run

    def __len__(self) -> int:
        return len(self._files)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def resize(self, max_bytes: int, max_count: int) -> None:
        with self._lock:
            self.max_bytes, self.max_count = max_bytes, max_count
            self._make_room(0)

    def add(self, name: str, data: bytes) -> bool:
        """Store one sample (dropping the oldest for room); False if it cannot fit at all or I/O failed."""
        with self._lock:
            if len(data) > self.max_bytes:
                self.dropped += 1
                return False
            self._make_room(len(data))
            try:
                atomic_write(self.root / name, data)
            except OSError as exc:
                self.errors += 1
                log.warning("capture: sample not stored: %s", exc.strerror)
                return False
            self._files[name] = len(data)
            self._bytes += len(data)
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            return True

    def _make_room(self, incoming: int) -> None:
        while self._files and (
            self._bytes + incoming > self.max_bytes or len(self._files) + (1 if incoming else 0) > self.max_count
        ):
            name, size = self._files.popitem(last=False)
            self._unlink(name)
            self._bytes -= size
            self.dropped += 1

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(self.root / name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("capture: cannot delete %s: %s", name, exc.strerror)

    def oldest(self, count: int, max_bytes: int) -> list[tuple[str, bytes]]:
        """Up to ``count`` of the oldest samples (at least one, at most ``max_bytes`` together after it)."""
        with self._lock:
            names = list(self._files.items())
        out: list[tuple[str, bytes]] = []
        total = 0
        for name, size in names[:count]:
            if out and total + size > max_bytes:
                break
            try:
                out.append((name, (self.root / name).read_bytes()))
            except OSError:
                continue  # dropped meanwhile
            total += size
        return out

    def remove(self, names: Iterable[str]) -> int:
        """Delete confirmed samples; returns how many were still here."""
        removed = 0
        with self._lock:
            for name in names:
                size = self._files.pop(name, None)
                if size is None:
                    continue
                self._unlink(name)
                self._bytes -= size
                removed += 1
        return removed

    def clear(self) -> None:
        with self._lock:
            for name in list(self._files):
                self._unlink(name)
            self._files.clear()
            self._bytes = 0
