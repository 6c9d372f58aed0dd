"""The capture repository on SQLite and on PostgreSQL: policies (one enabled per selector and model), the
sample index (idempotent adds, queries, labels, exact deletes), each change audited."""

from __future__ import annotations

from typing import Any

from fleet.store import Store
from fleet.store.captures import CaptureQuery

FLEET = "f"


def _row(device: str, sample: str, ts: float, reason: str = "random", model: str = "1.0.0") -> dict[str, Any]:
    return {
        "fleet": FLEET, "device": device, "id": sample, "sku": "b", "policy": "p1", "model_name": "digits",
        "model_version": model, "model_sha256": "0" * 64, "ts": ts, "reason": reason, "score": 0.5, "top1": 3,
        "conf": 0.5, "label": None, "path": f"/x/{sample}", "size": 100, "sha256": "1" * 64, "received_at": ts,
    }  # fmt: skip


def test_policies_and_the_sample_index(store_url: str) -> None:
    store = Store(store_url)
    try:
        repo = store.captures
        first = repo.enable(FLEET, "sku=b", None, {"random": 0.01}, None, "alice", 1.0)
        second = repo.enable(FLEET, "sku=b", None, {"random": 0.02}, 99.0, "alice", 2.0)  # replaces the first
        other = repo.enable(FLEET, "sku=a", "digits@1.0.0", {"drift": 0.5}, None, "bob", 3.0)
        enabled = repo.policies(FLEET, enabled_only=True)
        assert [p.id for p in enabled] == [second.id, other.id] and second.rules == {"random": 0.02}
        assert [p.id for p in repo.disable(FLEET, "sku=a", "bob", 4.0)] == [other.id]
        assert [p.enabled for p in repo.policies(FLEET)] == [False, True, False] and first.enabled

        rows = [_row("d1", "s1", 10.0), _row("d1", "s2", 20.0, "drift"), _row("d2", "s1", 30.0, model="1.1.0")]
        assert repo.add(rows, "d1", "device/d1") == (["s1", "s2", "s1"], [])
        assert repo.add(rows[:1], "d1", "device/d1") == ([], ["s1"])  # the device sent it again
        assert [r.id for r in repo.find(FLEET, CaptureQuery(device="d1"))] == ["s1", "s2"]
        assert [r.device for r in repo.find(FLEET, CaptureQuery(model="digits@1.1.0"))] == ["d2"]
        assert [r.id for r in repo.find(FLEET, CaptureQuery(reason="drift", since=15.0))] == ["s2"]
        assert repo.label(FLEET, {("d1", "s1"): "3", ("d9", "nope"): "1"}, "alice") == 1
        assert [r.label for r in repo.find(FLEET, CaptureQuery(labelled=True))] == ["3"]
        assert repo.count(FLEET) == {"samples": 3, "bytes": 300}
        gone = repo.purge(FLEET, CaptureQuery(before=25.0), "alice")
        assert [(r.device, r.id) for r in gone] == [("d1", "s1"), ("d1", "s2")] and repo.count(FLEET)["samples"] == 1
        actions = [a.action for a in store.audit.log(None, 100)]
        for action in ("capture.enable", "capture.disable", "capture.upload", "capture.label", "capture.purge"):
            assert action in actions
    finally:
        store.close()
