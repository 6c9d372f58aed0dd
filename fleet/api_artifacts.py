"""Artifact downloads: an in-memory cache of small artifacts and HTTP Range (one range; 206 or 416)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from fastapi import Response
from fastapi.responses import StreamingResponse


class ArtifactCache:
    """Artifacts are immutable (named by their sha256): small ones are kept in memory, so thousands of
    devices downloading a release cost no store query, file read or thread hop each."""

    def __init__(self, max_bytes: int = 256 << 20, max_artifact: int = 16 << 20) -> None:
        self.max_bytes, self.max_artifact = max_bytes, max_artifact
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha: str) -> bytes | None:
        with self._lock:
            data = self._data.get(sha)
            if data is not None:
                self._data.move_to_end(sha)
            return data

    def load(self, sha: str, path: Path) -> bytes | None:
        """Read ``path`` into the cache if it is small enough; None for a large one (stream it)."""
        if path.stat().st_size > self.max_artifact:
            return None
        data = path.read_bytes()
        with self._lock:
            self._data[sha] = data
            while sum(len(d) for d in self._data.values()) > self.max_bytes:
                self._data.popitem(last=False)
        return data


BASE_HEADERS = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end) of the one range asked for (``bytes=A-B``, ``bytes=A-``, ``bytes=-N``); None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    start_s, dash, end_s = spec.strip().partition("-")
    try:
        if unit.strip() != "bytes" or not dash or "," in spec:
            return None
        if start_s:
            start, end = int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
        else:
            start, end = max(0, size - int(end_s)), size - 1
    except ValueError:
        return None
    return None if start < 0 or start > end or start >= size else (start, end)


def _unsatisfiable(size: int) -> Response:
    return Response(status_code=416, headers={**BASE_HEADERS, "Content-Range": f"bytes */{size}"})


def ranged(source: Path | bytes, header: str | None) -> Response:
    """An artifact (a file, or its bytes held in memory), or the one byte range asked for: 206 or 416.

    A file is streamed in chunks from a plain generator (no lazily imported async file layer).
    """
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    span = byte_range(header, size) if header else None
    if header and span is None:
        return _unsatisfiable(size)
    start, end = span or (0, size - 1)
    headers = {**BASE_HEADERS, "Content-Length": str(end - start + 1)}
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    status = 206 if span is not None else 200
    if isinstance(source, bytes):
        return Response(source[start : end + 1], status_code=status, headers=headers)
    return StreamingResponse(_chunks(source, start, end - start + 1), status_code=status, headers=headers)


def _chunks(path: Path, start: int, length: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        while length > 0 and (data := fh.read(min(chunk, length))):
            length -= len(data)
            yield data
