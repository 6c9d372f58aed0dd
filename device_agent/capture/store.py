"""The device's capture store: one ``.sample`` file per sample under ``HOME/capture/samples``, bounded in bytes
and in count. A new sample first makes room by dropping the oldest ones (counted in ``dropped``), so the
store never holds more than its bounds, even for an instant. Files are written atomically; a sample
leaves the store only when dropped for room or once the fleet manager confirmed it (``remove``).

``add_many`` writes a batch with one group commit (every file's data, then the renames, made durable once
for the batch) instead of two flushes per sample: a flush per file cost ~0.5 ms of CPU and ~5-10 ms of wall
time on this machine, which at a high capture rate was most of what capture cost the agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from device_agent.fsutil import atomic_write, fsync_dir

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
        self._writing: dict[str, str] = {}  # name -> temp file of a batch being written (add_many)
        self._scan()

    def _scan(self) -> None:
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return
        for path in entries:
            if path.name.startswith(".") and path.suffix == ".tmp":  # a batch cut short by a power cut
                path.unlink(missing_ok=True)
            if path.suffix != SUFFIX or path.name.startswith("."):
                continue
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

    def add_many(self, items: list[tuple[str, bytes]]) -> list[bool]:
        """Store a batch (as ``add`` would, one by one) with one group commit; per item, whether it is stored.
        Room is made before each item is written, so the store holds no more than its bounds at any instant
        (a batch item dropped for a later one is never renamed into place)."""
        if len(items) == 1:
            return [self.add(*items[0])]
        stored: list[tuple[str, int]] = []
        with self._lock:
            for name, data in items:
                if len(data) > self.max_bytes:
                    self.dropped += 1
                    continue
                self._make_room(len(data))
                tmp = os.path.join(self.root, f".{name}.tmp")  # str, not Path: pathlib costs ~20 µs a sample
                try:
                    _write(tmp, data)
                except OSError as exc:
                    self.errors += 1
                    log.warning("capture: sample not stored: %s", exc.strerror)
                    continue
                self._writing[name] = tmp
                self._files[name] = len(data)
                self._bytes += len(data)
                self.peak_bytes = max(self.peak_bytes, self._bytes)
                stored.append((name, len(data)))
            try:
                group_commit(self.root, self._writing)
            except OSError as exc:
                log.warning("capture: batch not stored: %s", exc.strerror)
                for name, size in stored:
                    if self._files.pop(name, None) is not None:
                        self._bytes -= size
                        self.errors += 1
                    for path in (self._writing.pop(name, None), os.path.join(self.root, name)):
                        if path is not None:
                            with contextlib.suppress(OSError):
                                os.unlink(path)
                return [False] * len(items)
            done = set(self._writing)
            self._writing.clear()
        return [name in done for name, _ in items]

    def _make_room(self, incoming: int) -> None:
        while self._files and (
            self._bytes + incoming > self.max_bytes or len(self._files) + (1 if incoming else 0) > self.max_count
        ):
            name, size = self._files.popitem(last=False)
            self._unlink(name)
            self._bytes -= size
            self.dropped += 1

    def _unlink(self, name: str) -> None:
        tmp = self._writing.pop(name, None)  # an item of this very batch, not yet in place
        try:
            os.unlink(tmp or self.root / name)
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


def _write(path: str, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:  # the directory is new
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def group_commit(root: Path, written: dict[str, str]) -> None:
    """Make a batch of temp files durable, then move them into place durably: after a power cut each sample
    is there whole or not at all (as with ``atomic_write``), for two flushes per batch instead of per file."""
    if not written:
        return
    sync_files(root, list(written.values()))
    for name, tmp in written.items():
        os.replace(tmp, os.path.join(root, name))
    fsync_dir(root)


def sync_files(root: Path, paths: list[str]) -> None:
    """Flush the files' data: one ``syncfs(2)`` of their file system on Linux (os has no wrapper; ctypes is
    the standard library's way to the libc call), else an fsync per file. syncfs also flushes other writers'
    dirty data on that file system: once per batch (at most ~5 a second) that is far cheaper than a flush
    per file (measured: ~0.1-0.2 vs 0.3-0.45 ms of CPU per sample, see docs/benchmarks.md)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        if _syncfs(fd):
            return
    finally:
        os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_SYNCFS: list[Any] = []


def _syncfs(fd: int) -> bool:
    if not _SYNCFS:
        import ctypes  # lazy: only a batch write needs it

        try:
            _SYNCFS.append(ctypes.CDLL(None, use_errno=True).syncfs)
        except (AttributeError, OSError):
            _SYNCFS.append(None)
    fn = _SYNCFS[0]
    return fn is not None and fn(fd) == 0
