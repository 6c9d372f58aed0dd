"""Artifact serving helpers: Range parsing (pure), the in-memory cache of small artifacts, and the
bytes/stream responses agreeing with each other."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleet.api import ArtifactCache, byte_range, ranged


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-5", (95, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=100-", None),  # starts past the end
        ("bytes=5-1", None),
        ("bytes=0-1,5-6", None),  # one range only
        ("items=0-1", None),
        ("bytes=a-b", None),
        ("bytes", None),
    ],
)
def test_byte_range(header: str, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 100) == expected


def test_cache_keeps_small_artifacts_evicts_oldest_and_streams_large_ones(tmp_path: Path) -> None:
    cache = ArtifactCache(max_bytes=250, max_artifact=100)
    files = {}
    for name in ("a", "b", "c"):
        files[name] = tmp_path / name
        files[name].write_bytes(name.encode() * 100)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    assert cache.load("big", big) is None and cache.get("big") is None  # too large: streamed from disk
    for name in ("a", "b", "c"):
        assert cache.load(name, files[name]) == name.encode() * 100
    assert cache.get("a") is None  # 300 bytes > 250: the oldest went
    assert cache.get("c") == b"c" * 100


def _body(response: object) -> bytes:
    async def collect() -> bytes:
        chunks = [c async for c in response.body_iterator]  # type: ignore[attr-defined]
        return b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks)

    return response.body if hasattr(response, "body") else asyncio.run(collect())  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("header", [None, "bytes=10-19", "bytes=-7", "bytes=500-"])
def test_bytes_and_stream_responses_agree(tmp_path: Path, header: str | None) -> None:
    data = bytes(range(256))
    path = tmp_path / "artifact"
    path.write_bytes(data)
    from_memory, from_disk = ranged(data, header), ranged(path, header)
    assert from_memory.status_code == from_disk.status_code
    assert from_memory.headers.get("content-range") == from_disk.headers.get("content-range")
    if from_memory.status_code != 416:
        assert _body(from_memory) == _body(from_disk)
