"""The device's capture store: samples appended to segment files under ``HOME/capture/samples``, bounded in
bytes on disk and in count.

A segment (``<first sample id>.seg``) is a header and then records ``[u32 length][u32 crc32][u16 name
length][name][sample]``; a batch of samples is one ``write`` to the open segment, a new segment starts once
the open one passes ``segment_bytes`` (a sixteenth of the byte bound, at most 1 MiB). This replaced a file
per sample: creating, flushing and renaming a file cost the kernel 0.1-0.2 ms per sample, which at a high
capture rate was most of what capture cost the agent (docs/benchmarks.md); a record costs ~1 µs. Written
by hand because what it needs (an append-only log whose oldest files are dropped whole, readable after a
torn write) is a few dozen lines and no small library offers it without a database engine.

Bounds: a new batch first makes room by dropping the oldest segments whole (each sample in them counted in
``dropped``), so the bytes on disk never exceed ``max_bytes``, even for an instant. Dropping a whole segment
drops at most a sixteenth of the store more than needed.

Durability: a batch's records are in the page cache when ``add_many`` returns (a killed agent loses
nothing), and flushed (``fdatasync``) at most ``SYNC_S`` later by ``sync_if_due`` (the rules worker calls it)
or when the segment is closed. After a power cut a torn last record fails its CRC and is cut off when the
store is opened again; at most the last ``SYNC_S`` of samples can be lost.

Confirmed samples: ``remove`` forgets them at once, and a segment is deleted when none of its samples is
left. The uploader sends the oldest first, so only the oldest segment holds confirmed samples that are still
on disk; after a restart they are read again and sent again, and the fleet manager, which keys samples by
id, confirms them again without storing them twice.

Files of earlier agents (one ``.sample`` file per sample) are read, uploaded and deleted as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from device_agent.fsutil import fsync_dir

log = logging.getLogger("edge-agent")
SUFFIX = ".sample"  # a sample's name: its id and this suffix; also the file of an earlier agent's sample
SEGMENT = ".seg"
MAGIC = b"EFCAPSG1"  # a segment's first 8 bytes
_REC = struct.Struct(">IIH")  # record length (after these 10 bytes), crc32 of the rest, name length
SEGMENT_MAX = 1 << 20  # bytes a segment grows to at most (smaller for small stores: a sixteenth of the bound)
SYNC_S = 1.0  # a batch is flushed to the disk at most this long after it was written


@dataclass
class _Segment:
    path: str
    size: int  # bytes on disk
    live: int  # samples in it not yet removed or dropped


class CaptureStore:
    """Samples by name (names sort oldest first); thread-safe."""

    def __init__(self, root: Path, max_bytes: int, max_count: int) -> None:
        self.root, self.max_bytes, self.max_count = root, max_bytes, max_count
        self.segment_bytes = _segment_bytes(max_bytes)
        self.dropped = 0  # samples dropped to make room (since the agent started)
        self.errors = 0  # samples lost to I/O errors (a full disk)
        self.peak_bytes = 0  # the most the store held on disk at once (since the agent started)
        self._lock = threading.Lock()
        self._samples: OrderedDict[str, tuple[str, int, int]] = OrderedDict()  # name -> (segment, offset, size)
        self._segments: OrderedDict[str, _Segment] = OrderedDict()  # by name, oldest first
        self._bytes = 0
        self._open: tuple[str, int] | None = None  # the segment being appended to, and its fd
        self._unsynced = 0.0  # time.monotonic() of the oldest write not yet flushed (0: none)
        self._scan()

    # --- opening ------------------------------------------------------------------------------------------

    def _scan(self) -> None:
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return
        for path in entries:
            if path.name.startswith("."):
                if path.suffix == ".tmp":  # an earlier agent's write cut short by a power cut
                    path.unlink(missing_ok=True)
                continue
            if path.suffix == SEGMENT:
                self._load_segment(path)
            elif path.suffix == SUFFIX:  # an earlier agent's one-sample file
                with contextlib.suppress(OSError):
                    size = path.stat().st_size
                    self._index(path.name, str(path), [(path.name, 0, size)], size)
        self._make_room(0, 0)  # bounds may have shrunk since the last run

    def _load_segment(self, path: Path) -> None:
        try:
            data = path.read_bytes()
            records, good = read_records(data)
            if good < len(data):  # a torn tail (a power cut): cut it off
                log.warning("capture: %s: %d torn bytes at its end cut off", path.name, len(data) - good)
                os.truncate(path, good)
        except OSError as exc:
            log.warning("capture: cannot read %s: %s", path.name, exc.strerror)
            return
        if not records:
            path.unlink(missing_ok=True)
            return
        self._index(path.name, str(path), records, good)

    def _index(self, seg: str, path: str, records: list[tuple[str, int, int]], size: int) -> None:
        self._segments[seg] = _Segment(path, size, len(records))
        self._bytes += size
        for name, off, n in records:
            self._samples[name] = (seg, off, n)

    # --- reading ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def size_bytes(self) -> int:
        """Bytes on disk (records, their framing, and removed samples whose segment is still in use)."""
        return self._bytes

    def names(self) -> list[str]:
        with self._lock:
            return list(self._samples)

    def oldest(self, count: int, max_bytes: int) -> list[tuple[str, bytes]]:
        """Up to ``count`` of the oldest samples (at least one, at most ``max_bytes`` together after it)."""
        with self._lock:
            picked: list[tuple[str, tuple[str, int, int]]] = []
            total = 0
            for name, loc in self._samples.items():
                if len(picked) >= count or (picked and total + loc[2] > max_bytes):
                    break
                picked.append((name, loc))
                total += loc[2]
            paths = {seg: self._segments[seg].path for _, (seg, _, _) in picked}
        out: list[tuple[str, bytes]] = []
        fds: dict[str, int] = {}
        try:
            for name, (seg, off, size) in picked:
                try:
                    fd = fds.get(seg)
                    if fd is None:
                        fd = fds[seg] = os.open(paths[seg], os.O_RDONLY)
                    data = os.pread(fd, size, off)
                except OSError:
                    continue  # dropped meanwhile
                if len(data) == size:
                    out.append((name, data))
        finally:
            for fd in fds.values():
                os.close(fd)
        return out

    # --- writing ------------------------------------------------------------------------------------------

    def resize(self, max_bytes: int, max_count: int) -> None:
        with self._lock:
            self.max_bytes, self.max_count = max_bytes, max_count
            self.segment_bytes = _segment_bytes(max_bytes)
            self._make_room(0, 0)

    def add(self, name: str, data: bytes) -> bool:
        """Store one sample (dropping the oldest for room); False if it cannot fit at all or I/O failed."""
        return self.add_many([(name, data)])[0]

    def add_many(self, items: list[tuple[str, bytes]]) -> list[bool]:
        """Append a batch (in order, oldest first); per item, whether it is stored. Room is made before the
        batch is written, so the store holds no more than its bounds at any instant; an item that can never
        fit is refused, and an item that a later one of the same batch would drop at once is not written:
        both are counted as dropped."""
        out = [False] * len(items)
        with self._lock:
            dropped = self.dropped
            # The records for one segment (a batch may fill more than one): (item, name, (head, sample)).
            run: list[tuple[int, str, tuple[bytes, bytes]]] = []
            limit = self.segment_bytes - self._open_size()  # the bytes of records the open segment takes
            biggest = self.max_bytes - len(MAGIC)
            for i, (name, data) in enumerate(items):
                rec = _record(name, data)  # (head, sample): joined once for the whole run
                size = len(rec[0]) + len(data)
                if size > biggest:
                    self.dropped += 1
                    continue
                if size > limit and (run or self._open):
                    if run:
                        self._write_run(run, out)
                    self._close_open()
                    run, limit = [], self.segment_bytes - len(MAGIC)
                run.append((i, name, rec))
                limit -= size
            if run:
                self._write_run(run, out)
            if self.dropped != dropped:  # written, then dropped for a later item of the batch?
                for i, (name, _) in enumerate(items):
                    if out[i] and name not in self._samples:
                        out[i] = False
        return out

    def _open_size(self) -> int:
        return self._segments[self._open[0]].size if self._open else len(MAGIC)

    def _write_run(self, run: list[tuple[int, str, tuple[bytes, bytes]]], out: list[bool]) -> None:
        """Make room, then append ``run`` to the open segment (a new one if none) with one write."""
        if len(run) > self.max_count:  # the oldest of the run would be dropped at once for the newest
            self.dropped += len(run) - self.max_count
            run = run[len(run) - self.max_count :]
        blob = b"".join([part for _, _, rec in run for part in rec])
        self._make_room(len(blob), len(run))
        if self._open is None and not self._start(run[0][1]):
            self.errors += len(run)
            return
        assert self._open is not None
        seg_name, fd = self._open
        seg = self._segments[seg_name]
        try:
            _write_all(fd, blob)
        except OSError as exc:
            self.errors += len(run)
            log.warning("capture: %d samples not stored: %s", len(run), exc.strerror)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, seg.size)  # no torn record left behind (a full disk)
            self._maybe_forget(seg_name)
            return
        off = seg.size
        samples = self._samples
        for i, name, (head, data) in run:
            samples[name] = (seg_name, off + len(head), len(data))
            off += len(head) + len(data)
            out[i] = True
        seg.size += len(blob)
        seg.live += len(run)
        self._bytes += len(blob)
        self.peak_bytes = max(self.peak_bytes, self._bytes)
        if not self._unsynced:
            self._unsynced = time.monotonic()

    def _start(self, first: str) -> bool:
        """A new segment, named after its first sample, its header durable in the directory."""
        seg_name = first.removesuffix(SUFFIX) + SEGMENT
        path = os.path.join(self.root, seg_name)  # str, not Path: pathlib costs ~20 µs
        try:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileNotFoundError:  # the directory is new
                os.makedirs(self.root, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except OSError as exc:
            log.warning("capture: cannot start a segment: %s", exc.strerror)
            return False
        try:
            _write_all(fd, MAGIC)
            os.fdatasync(fd)
            fsync_dir(self.root)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            log.warning("capture: cannot start a segment: %s", exc.strerror)
            return False
        self._segments[seg_name] = _Segment(path, len(MAGIC), 0)
        self._bytes += len(MAGIC)
        self._open = (seg_name, fd)
        return True

    def _close_open(self) -> None:
        if self._open is not None:
            _, fd = self._open
            self._open = None
            with contextlib.suppress(OSError):
                os.fdatasync(fd)
            os.close(fd)
            self._unsynced = 0.0

    def sync_if_due(self, force: bool = False) -> None:
        """Flush the open segment if a write in it is ``SYNC_S`` old (or at all, with ``force``)."""
        with self._lock:
            if self._open is None or not self._unsynced:
                return
            if force or time.monotonic() - self._unsynced >= SYNC_S:
                try:
                    os.fdatasync(self._open[1])
                except OSError as exc:
                    log.warning("capture: flush failed: %s", exc.strerror)
                self._unsynced = 0.0

    def close(self) -> None:
        with self._lock:
            self._close_open()

    # --- removing -----------------------------------------------------------------------------------------

    def _make_room(self, incoming: int, count: int) -> None:
        """Drop the oldest segments whole until ``incoming`` bytes of records (and a new segment's header,
        if none is open) and ``count`` samples fit."""
        while self._segments:
            need = incoming + (len(MAGIC) if incoming and self._open is None else 0)
            if self._bytes + need <= self.max_bytes and len(self._samples) + count <= self.max_count:
                return
            self.dropped += self._drop_segment(next(iter(self._segments)))

    def _drop_segment(self, seg_name: str) -> int:
        """Delete a segment and forget its samples; how many were still live in it."""
        if self._open is not None and self._open[0] == seg_name:
            os.close(self._open[1])
            self._open = None
            self._unsynced = 0.0
        seg = self._segments.pop(seg_name)
        self._bytes -= seg.size
        gone = 0
        samples = self._samples
        while samples and gone < seg.live:  # the oldest segment's samples come first (the common case)
            name, loc = next(iter(samples.items()))
            if loc[0] != seg_name:
                break
            del samples[name]
            gone += 1
        if gone < seg.live:  # any other segment (a failed write, ``clear``): look for them
            rest = [name for name, loc in samples.items() if loc[0] == seg_name]
            for name in rest:
                del samples[name]
            gone += len(rest)
        try:
            os.unlink(seg.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("capture: cannot delete %s: %s", seg_name, exc.strerror)
        return gone

    def _maybe_forget(self, seg_name: str) -> None:
        """A segment with no live samples left is deleted."""
        seg = self._segments.get(seg_name)
        if seg is not None and seg.live <= 0:
            self._drop_segment(seg_name)

    def remove(self, names: Iterable[str]) -> int:
        """Forget confirmed samples (a segment is deleted once none of its samples is left); how many were
        still here."""
        removed = 0
        with self._lock:
            emptied: list[str] = []
            for name in names:
                loc = self._samples.pop(name, None)
                if loc is None:
                    continue
                seg = self._segments[loc[0]]
                seg.live -= 1
                if seg.live <= 0:
                    emptied.append(loc[0])
                removed += 1
            for seg_name in emptied:
                self._maybe_forget(seg_name)
        return removed

    def clear(self) -> None:
        with self._lock:
            for seg_name in list(self._segments):
                self._drop_segment(seg_name)
            self._samples.clear()


def _segment_bytes(max_bytes: int) -> int:
    """A segment's size: a sixteenth of the store (what dropping one segment costs), 4 KiB to 1 MiB."""
    return min(max_bytes, max(4096, min(SEGMENT_MAX, max_bytes // 16)))


def _record(name: str, data: bytes) -> tuple[bytes, bytes]:
    """A record as its head (framing and name) and the sample, not joined (a copy saved per sample)."""
    raw = name.encode()
    return _REC.pack(len(raw) + len(data), zlib.crc32(data, zlib.crc32(raw)), len(raw)) + raw, data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_records(data: bytes) -> tuple[list[tuple[str, int, int]], int]:
    """A segment's records as (name, offset of the sample, its size), and the length of its valid prefix
    (a record that is cut short or fails its CRC ends the segment). Not a segment: no records, 0."""
    if not data.startswith(MAGIC):
        return [], 0
    out: list[tuple[str, int, int]] = []
    pos = len(MAGIC)
    while pos + _REC.size <= len(data):
        length, crc, name_len = _REC.unpack_from(data, pos)
        start, end = pos + _REC.size, pos + _REC.size + length
        if not 0 < name_len < length or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        try:
            name = data[start : start + name_len].decode()
        except UnicodeDecodeError:
            break
        out.append((name, start + name_len, length - name_len))
        pos = end
    return out, pos


def sample_names(root: Path) -> Iterator[str]:
    """The names of the samples stored under ``root``, read from its files (for tools and tests that look
    at a store another process holds open)."""
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return
    for path in entries:
        if path.name.startswith("."):
            continue
        if path.suffix == SUFFIX:
            yield path.name
        elif path.suffix == SEGMENT:
            with contextlib.suppress(OSError):
                yield from (name for name, _, _ in read_records(path.read_bytes())[0])
