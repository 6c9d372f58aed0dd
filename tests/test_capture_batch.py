"""The capture store's batch write (``CaptureStore.add_many``): bounds held within a batch, one group commit."""

from __future__ import annotations

from pathlib import Path

from device_agent.capture.store import CaptureStore


def test_a_batch_keeps_the_bounds_and_drops_its_own_oldest_items(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "s", 3000, 100)
    assert store.add("0000000000000-old.sample", bytes(1000))
    items = [(f"{i:013d}-new.sample", bytes([i]) * 1000) for i in range(1, 6)]
    assert store.add_many(items) == [False, False, True, True, True]  # the first two made room for the last
    on_disk = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert on_disk == [name for name, _ in items[2:]]  # no temp file left, nothing renamed after its drop
    assert store.dropped == 3 and store.peak_bytes <= 3000 and store.size_bytes == 3000 == len(store) * 1000
    assert [data for _, data in store.oldest(10, 1 << 20)] == [data for _, data in items[2:]]
    assert store.add_many([("big.sample", bytes(3001)), ("ok.sample", bytes(10))]) == [False, True]


def test_a_batch_cut_short_leaves_no_temp_files_after_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / ".0000000000001-x.sample.tmp").write_bytes(bytes(500))  # written, never renamed: a power cut
    (root / "0000000000002-y.sample").write_bytes(bytes(700))
    store = CaptureStore(root, 1 << 20, 100)
    assert [p.name for p in root.iterdir()] == ["0000000000002-y.sample"] and store.size_bytes == 700
