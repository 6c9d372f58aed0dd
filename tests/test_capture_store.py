"""The device's capture store (``device_agent.capture.store``): samples appended to segment files, bounded
in bytes on disk and in count at every instant, a torn tail after a power cut cut off, a full disk refused
without a torn record, confirmed samples forgotten, and an earlier agent's one-file-per-sample store read."""

from __future__ import annotations

import os
from pathlib import Path

from device_agent.capture.store import MAGIC, SEGMENT, CaptureStore, sample_names
from tests.support.diskfs import fill


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.iterdir())


def _items(first: int, n: int, size: int = 1000) -> list[tuple[str, bytes]]:
    return [(f"{i:013d}-s.sample", bytes([i % 256]) * size) for i in range(first, first + n)]


def test_a_batch_keeps_the_bounds_and_drops_the_oldest_first(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = CaptureStore(root, 10_000, 100)  # segments of 4 KiB: three 1000-byte samples each
    stored: list[tuple[str, bytes]] = []
    for k in range(12):
        batch = _items(k * 4, 4)
        assert store.add_many(batch) == [True] * 4
        stored += batch
        assert _disk_bytes(root) == store.size_bytes <= 10_000 and store.peak_bytes <= 10_000
    names = sample_names(root)
    assert list(names) == store.names() and 0 < len(store) < 12  # the newest, in order
    assert store.names() == [name for name, _ in stored[-len(store) :]]
    assert store.dropped == 48 - len(store)
    assert store.oldest(100, 1 << 20) == stored[-len(store) :]  # the bytes as given
    before, held = store.dropped, len(store)
    assert store.add_many([("big.sample", bytes(10_001)), ("ok.sample", bytes(10))]) == [False, True]
    assert store.dropped == before + 1 + (held + 1 - len(store))  # the one that never fits, and any made room for


def test_the_count_bound_holds_within_one_batch(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "s", 1 << 20, 5)
    assert store.add_many(_items(0, 8, 100)) == [False] * 3 + [True] * 5  # the first three never written
    assert len(store) == 5 and store.dropped == 3
    assert store.add_many(_items(8, 2, 100)) == [True, True]  # a whole segment makes room
    assert len(store) <= 5 and store.names()[-1] == "0000000000009-s.sample"


def test_confirmed_samples_go_and_an_empty_segment_is_deleted(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = CaptureStore(root, 1 << 20, 1000)
    batch = _items(0, 10)
    store.add_many(batch)
    assert [p.suffix for p in root.iterdir()] == [SEGMENT]  # one file for the batch
    assert store.remove([name for name, _ in batch[:4]] + ["nope.sample"]) == 4
    assert store.oldest(100, 1 << 20) == batch[4:] and len(list(root.iterdir())) == 1
    store.close()
    again = CaptureStore(root, 1 << 20, 1000)  # after a restart the confirmed ones are read again:
    assert again.names() == [name for name, _ in batch]  # sent again, the fleet manager confirms again
    assert again.remove(again.names()) == 10 and not list(root.iterdir()) and again.size_bytes == 0


def test_a_torn_tail_after_a_power_cut_is_cut_off_and_the_store_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = CaptureStore(root, 1 << 20, 1000)
    batch = _items(0, 3)
    store.add_many(batch)
    store.close()
    (seg,) = root.iterdir()
    whole = seg.stat().st_size
    with seg.open("ab") as fh:  # a record whose write the power cut short
        fh.write(bytes.fromhex("000003f2deadbeef0016") + b"0000000000003-s.sample" + bytes(100))
    flipped = root / ("0000000000099-x" + SEGMENT)  # and a segment whose only record is garbage
    flipped.write_bytes(MAGIC + bytes(64))
    again = CaptureStore(root, 1 << 20, 1000)
    assert again.oldest(10, 1 << 20) == batch and seg.stat().st_size == whole and not flipped.exists()
    assert again.add_many(_items(3, 1)) == [True]
    assert len(again) == 4 and list(sample_names(root)) == again.names()


def test_an_earlier_agents_sample_files_are_read_sent_and_deleted(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / "0000000000001-old.sample").write_bytes(b"old sample")
    (root / ".0000000000002-cut.sample.tmp").write_bytes(bytes(500))  # its write cut short by a power cut
    store = CaptureStore(root, 1 << 20, 100)
    assert store.add("0000000000003-new.sample", b"new sample")
    assert store.oldest(10, 1 << 20) == [
        ("0000000000001-old.sample", b"old sample"),
        ("0000000000003-new.sample", b"new sample"),
    ]
    assert not (root / ".0000000000002-cut.sample.tmp").exists()
    assert store.remove(["0000000000001-old.sample"]) == 1 and not (root / "0000000000001-old.sample").exists()


def test_a_full_disk_refuses_a_batch_and_leaves_no_torn_record(fs: Path) -> None:
    store = CaptureStore(fs / "s", 1 << 20, 1000)
    assert store.add_many(_items(0, 2)) == [True, True]
    filler = fill(fs, leave=0)
    assert store.add_many(_items(2, 3)) == [False] * 3 and store.errors == 3  # refused, not raised
    assert len(store) == 2 and _disk_bytes(fs / "s") == store.size_bytes
    filler.unlink()
    assert store.add_many(_items(5, 1)) == [True]
    store.close()
    again = CaptureStore(fs / "s", 1 << 20, 1000)
    assert [n[:13] for n in again.names()] == ["0000000000000", "0000000000001", "0000000000005"]


def test_a_flushed_batch_survives_a_reopen_without_close(tmp_path: Path) -> None:
    """A killed agent never closes its store: what ``add_many`` returned True for is on disk regardless."""
    root = tmp_path / "s"
    store = CaptureStore(root, 1 << 20, 1000)
    store.add_many(_items(0, 5))
    store.sync_if_due(force=True)
    fd = os.open(next(root.iterdir()), os.O_RDONLY)
    os.close(fd)
    assert CaptureStore(root, 1 << 20, 1000).names() == store.names()
