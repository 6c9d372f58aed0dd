"""Safe, zero-copy reading of a bundle's ZIP container from bytes, with zip-bomb limits.

Nothing is extracted: entries are checked from the central directory first (names, types,
duplicates, sizes, compression ratio), then read straight out of the buffer. Stored entries are
sliced from the buffer without a copy; their CRC-32 is not re-checked because every file is pinned
by SHA-256 in the signed manifest, which is the stronger check (and keeps verify at hash speed).
"""

from __future__ import annotations

import hashlib
import io
import mmap
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from device_agent.errors import (
    AbsolutePathError,
    BundleFormatError,
    CompressionRatioError,
    DuplicateEntryError,
    EntryTooLargeError,
    PathTraversalError,
    SymlinkError,
    TooManyEntriesError,
    UnsafeEntryError,
)

Buffer = bytes | bytearray | memoryview | mmap.mmap
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error, RuntimeError)
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_CHUNK = 1 << 20  # bytes read at a time from a deflated entry


@dataclass(frozen=True)
class Limits:
    """Caps applied before any entry is read. Defaults suit models up to ~1 GiB."""

    max_bundle_bytes: int = 2 << 30  # bytes, the archive itself
    max_entries: int = 64
    max_entry_bytes: int = 1 << 30  # bytes, one uncompressed entry
    max_total_bytes: int = 2 << 30  # bytes, all entries uncompressed
    max_ratio: float = 50.0  # uncompressed / compressed size of one deflated entry


class _MemoryFile(io.RawIOBase):
    """A seekable read-only file over a buffer, so zipfile can parse it without copying."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = self._view[self._pos : self._pos + len(b)]
        n = len(chunk)
        memoryview(b).cast("B")[:n] = chunk
        self._pos += n
        return n


def check_name(name: str) -> None:
    """Refuse entry names that are absolute, traverse upwards, or are otherwise not plain paths.

    Raises:
        AbsolutePathError, PathTraversalError, UnsafeEntryError
    """
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise AbsolutePathError(f"entry {name[:120]!r} is an absolute or non-POSIX path")
    parts = name.split("/")
    if ".." in parts:
        raise PathTraversalError(f"entry {name[:120]!r} climbs out of the bundle with '..'")
    if any(p in ("", ".") for p in parts) or any(ord(c) < 32 for c in name):
        raise UnsafeEntryError(f"entry {name[:120]!r} is not a plain relative file path")


class Archive:
    """The checked central directory of a bundle, and bounded access to its entries."""

    def __init__(self, data: Buffer, limits: Limits | None = None) -> None:
        """Raises: BundleFormatError, LimitExceededError or UnsafeEntryError subclasses."""
        self.limits = limits or Limits()
        self._mmap = data if isinstance(data, mmap.mmap) else None
        self._view = memoryview(data).cast("B")
        if len(self._view) > self.limits.max_bundle_bytes:
            raise EntryTooLargeError(
                f"bundle is {len(self._view)} bytes, over the {self.limits.max_bundle_bytes}-byte limit"
            )
        self._precheck_count()
        try:
            self._zip = zipfile.ZipFile(_MemoryFile(self._view))
            infos = self._zip.infolist()
        except _ZIP_ERRORS as exc:
            raise BundleFormatError(f"not a readable ZIP archive: {exc}") from None
        self.entries: dict[str, zipfile.ZipInfo] = {}
        total = 0
        folded: set[str] = set()
        for info in infos:
            self._check_entry(info)
            if info.filename in self.entries or info.filename.casefold() in folded:
                raise DuplicateEntryError(f"entry {info.filename!r} appears more than once")
            self.entries[info.filename] = info
            folded.add(info.filename.casefold())
            total += info.file_size
            if total > self.limits.max_total_bytes:
                raise EntryTooLargeError(f"entries expand to over {self.limits.max_total_bytes} bytes")

    def _precheck_count(self) -> None:
        """Read the entry count from the end record before zipfile parses every header."""
        tail = self._view[-(65536 + 22) :].tobytes()
        pos = tail.rfind(b"PK\x05\x06")
        if pos >= 0 and len(tail) - pos >= 22:
            (count,) = struct.unpack_from("<H", tail, pos + 10)
            if count != 0xFFFF and count > self.limits.max_entries:
                raise TooManyEntriesError(f"archive declares {count} entries, limit is {self.limits.max_entries}")

    def _check_entry(self, info: zipfile.ZipInfo) -> None:
        name = info.filename
        if len(self.entries) >= self.limits.max_entries:
            raise TooManyEntriesError(f"archive has more than {self.limits.max_entries} entries")
        check_name(name)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            raise SymlinkError(f"entry {name!r} is a symbolic link")
        if info.is_dir() or (info.create_system == 3 and mode and not stat.S_ISREG(mode)):
            raise SymlinkError(f"entry {name!r} is not a regular file")
        if info.flag_bits & 0x1:
            raise BundleFormatError(f"entry {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BundleFormatError(f"entry {name!r} uses unsupported compression {info.compress_type}")
        if info.file_size > self.limits.max_entry_bytes:
            raise EntryTooLargeError(f"entry {name!r} is {info.file_size} bytes, over the per-entry limit")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise BundleFormatError(f"stored entry {name!r} has inconsistent sizes")
        if info.compress_type == zipfile.ZIP_DEFLATED and info.file_size > 1024:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > self.limits.max_ratio:
                raise CompressionRatioError(
                    f"entry {name!r} expands {ratio:.0f}x (limit {self.limits.max_ratio:.0f}x): zip bomb"
                )

    def _stored_view(self, info: zipfile.ZipInfo) -> memoryview:
        start, end = self._stored_range(info)
        return self._view[start:end]

    def _stored_range(self, info: zipfile.ZipInfo) -> tuple[int, int]:
        start = info.header_offset
        try:
            sig, *_, name_len, extra_len = _LOCAL_HEADER.unpack_from(self._view, start)
        except struct.error:
            raise BundleFormatError(f"entry {info.filename!r} has a truncated local header") from None
        if sig != b"PK\x03\x04":
            raise BundleFormatError(f"entry {info.filename!r} has a bad local header")
        name_start = start + _LOCAL_HEADER.size
        if self._view[name_start : name_start + name_len].tobytes() != info.orig_filename.encode(
            "utf-8" if info.flag_bits & 0x800 else "cp437"
        ):
            raise BundleFormatError(f"entry {info.filename!r}: local and central names differ")
        data_start = name_start + name_len + extra_len
        data_end = data_start + info.compress_size
        if data_end > len(self._view):
            raise BundleFormatError(f"entry {info.filename!r} runs past the end of the archive")
        return data_start, data_end

    def chunks(self, name: str) -> Iterator[memoryview | bytes]:
        """Yield the entry's bytes, never more than its declared size.

        Raises:
            BundleFormatError: the entry cannot be read or its data is corrupt.
        """
        info = self.entries[name]
        if info.compress_type == zipfile.ZIP_STORED:
            yield self._stored_view(info)
            return
        remaining = info.file_size
        try:
            with self._zip.open(info) as fh:
                while remaining >= 0:
                    chunk = fh.read(min(_CHUNK, remaining + 1))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    if remaining < 0:
                        raise EntryTooLargeError(f"entry {name!r} is larger than it declares")
                    yield chunk
        except _ZIP_ERRORS as exc:
            raise BundleFormatError(f"entry {name!r} is corrupt: {exc}") from None

    def read(self, name: str, max_bytes: int) -> bytes:
        """Read a small entry whole (manifest, signatures, labels)."""
        info = self.entries[name]
        if info.file_size > max_bytes:
            raise EntryTooLargeError(f"{name} is {info.file_size} bytes, over its {max_bytes}-byte limit")
        return b"".join(bytes(c) for c in self.chunks(name))

    def digest(self, name: str) -> tuple[int, str]:
        """(size, sha256 hex) of the entry's actual content.

        A stored entry of a bundle mapped from a file (``mmap``) is hashed a window at a time, each
        window's pages released once hashed, so verifying a bundle of any size costs the process
        about one window of resident memory, not the bundle's size.
        """
        h = hashlib.sha256()
        info = self.entries[name]
        if self._mmap is not None and info.compress_type == zipfile.ZIP_STORED:
            start, end = self._stored_range(info)
            for i in range(start, end, _CHUNK):
                h.update(self._view[i : min(i + _CHUNK, end)])
                self._release(i, min(i + _CHUNK, end))
            return end - start, h.hexdigest()
        size = 0
        for chunk in self.chunks(name):
            h.update(chunk)
            size += len(chunk)
        return size, h.hexdigest()

    def _release(self, start: int, end: int) -> None:
        """Drop the mapped pages within [start, end) from this process (they stay in the page cache)."""
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the range only
        last = end - end % mmap.PAGESIZE
        if self._mmap is not None and last > first and hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED, first, last - first)


FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest ZIP timestamp; fixed so output is reproducible


def write_zip(contents: dict[str, bytes]) -> bytes:
    """Write a reproducible ZIP: sorted entries, fixed timestamps and modes, stored (uncompressed).

    Entries are stored, not deflated: models barely compress, stored entries can be memory-mapped
    in place on the device, and deflate output may differ between zlib builds (breaking
    byte-for-byte reproducibility).
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(contents):
            check_name(name)
            info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, contents[name])
    return out.getvalue()
