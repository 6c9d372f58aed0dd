"""Captured samples on the fleet manager: uploads checked and stored (files under the artifacts directory,
an index row each), exports in the toolchain's feeds format with a metadata sidecar, labels, purges and
retention.

An upload is refused as a whole only when the device is unknown or its token is wrong; each sample is then
checked on its own (plain ``.npy`` arrays with bounded sizes after its metadata), stored, or refused
with a reason. Stored and already-held ids are both confirmed, so a device that lost an answer and sends
again loses nothing and duplicates nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from device_agent._json import Fields
from device_agent.capture.npz import read_sample, write_npz
from device_agent.capture.upload import unframe
from device_agent.errors import PayloadError
from device_agent.fsutil import atomic_write
from device_agent.protocol import ID_RE, SHA256_RE
from fleet.capture.policy import CapturePolicies
from fleet.errors import AuthError, InvalidRequestError, NotFoundError
from fleet.store import Store, audit
from fleet.store.captures import CaptureQuery, CaptureRow

log = logging.getLogger("fleetctl.capture")
MAX_UPLOAD = 8 << 20  # bytes of one upload request
MAX_SAMPLES = 1000  # samples in one upload
MAX_SAMPLE_BYTES = 4 << 20  # bytes of one sample, unpacked
MAX_ARRAYS = 64  # arrays in one sample
WRITERS = 8  # threads writing one upload's sample files
SAMPLE_ID_RE = re.compile(r"[0-9]{13}-[0-9]{8}-[0-9a-f]{8}")
REASONS = ("low-confidence", "drift", "random")
EXPORT_FORMAT = "edgefleet-capture-export/1"


class CaptureSamples:
    """The sample side of capture for one fleet; files live under ``root`` (``ARTIFACTS/captures``)."""

    def __init__(self, store: Store, fleet: str, root: Path, policies: CapturePolicies) -> None:
        self.store, self.fleet, self.root, self.policies = store, fleet, root, policies  # root: made on first write

    # --- uploads ---------------------------------------------------------------------------------------

    def receive(self, device_header: str, token: str, body: bytes, now: float) -> dict[str, Any]:
        """Store one upload. Raises: AuthError (unknown device or wrong token), InvalidRequestError."""
        fleet, _, device = device_header.partition("/")
        if fleet != self.fleet or not ID_RE.fullmatch(device) or not self.policies.token_ok(device, token):
            raise AuthError("capture upload refused: unknown device or wrong upload token")
        try:
            row = self.store.devices.get(device)
        except NotFoundError:
            raise AuthError("capture upload refused: unknown device") from None
        if row.admission != "accepted":
            raise AuthError(f"capture upload refused: device {device} is {row.admission}")
        try:
            parts = unframe(body, MAX_SAMPLES)
        except ValueError as exc:
            raise InvalidRequestError(f"capture upload: {exc}") from None
        rows, rejected, files = [], [], []
        for data in parts:
            try:
                rows.append(self._sample_row(data, device, row.sku, now))
                files.append((Path(rows[-1]["path"]), data))
            except PayloadError as exc:  # the device drops what it cannot fix; the reason is audited
                rejected.append({"id": _claimed_id(data), "reason": str(exc)[:200]})
        _write_all(files)  # every file durable before its index row says it is here
        new, held = self.store.captures.add(rows, device, f"device/{device}")
        return {"confirmed": new + held, "stored": len(new), "duplicates": len(held), "rejected": rejected}

    def _sample_row(self, data: bytes, device: str, sku: str | None, now: float) -> dict[str, Any]:
        _, meta = load_sample(data)
        f = Fields(meta, "sample", PayloadError)
        sample_id = f.string("id", max_len=64)
        model = f.child("model")
        values = {
            "fleet": self.fleet,
            "device": device,
            "id": sample_id,
            "sku": sku,
            "policy": f.opt_string("policy", max_len=64),
            "model_name": model.string("name", max_len=64),
            "model_version": model.string("version", max_len=128),
            "model_sha256": model.string("sha256", pattern=SHA256_RE),
            "ts": f.integer("ts", lo=0, hi=10**13) / 1000.0,
            "reason": f.enum("reason", REASONS),
            "score": f.number("score"),
            "top1": f.opt_integer("top1", lo=0, hi=1 << 31),
            "conf": f.number("conf", lo=0.0, hi=1.0) if meta.get("conf") is not None else None,
            "label": None,
        }
        if not SAMPLE_ID_RE.fullmatch(sample_id):
            f.fail("id", f"must match {SAMPLE_ID_RE}")
        path = self.root / device / f"{sample_id}.sample"
        sha = hashlib.sha256(data).hexdigest()
        return values | {"path": str(path), "size": len(data), "sha256": sha, "received_at": now}

    # --- queries, labels, purges -----------------------------------------------------------------------

    def find(self, q: CaptureQuery) -> list[CaptureRow]:
        return self.store.captures.find(self.fleet, q)

    def label(self, labels: Sequence[tuple[str, str, str | None]], actor: str) -> int:
        """``(device, id, label or None)`` triples. Raises: InvalidRequestError (a label too long)."""
        for _, _, value in labels:
            if value is not None and not 0 < len(value) <= 64:
                raise InvalidRequestError("a label has 1 to 64 characters")
        return self.store.captures.label(self.fleet, {(d, i): v for d, i, v in labels}, actor)

    def purge(self, q: CaptureQuery, actor: str, action: str = "capture.purge") -> int:
        """Delete the samples ``q`` selects: index rows first (audited), then their files."""
        rows = self.store.captures.purge(self.fleet, q, actor, action)
        _unlink(rows)
        return len(rows)

    def enforce_retention(self, max_age_s: float | None, max_bytes: int | None, now: float) -> int:
        """Drop samples older than ``max_age_s`` and the oldest beyond ``max_bytes``; returns how many."""
        dropped = 0
        if max_age_s is not None:
            dropped += self.purge(CaptureQuery(before=now - max_age_s), "retention", "capture.retention")
        if max_bytes is not None and (over := self.store.captures.count(self.fleet)["bytes"] - max_bytes) > 0:
            oldest: list[CaptureRow] = []
            for row in self.find(CaptureQuery()):
                if over <= 0:
                    break
                oldest.append(row)
                over -= row.size
            self.store.captures.delete(self.fleet, oldest, "retention", "capture.retention", f"over {max_bytes} bytes")
            _unlink(oldest)
            dropped += len(oldest)
        return dropped

    # --- exports ---------------------------------------------------------------------------------------

    def export(self, q: CaptureQuery, actor: str, now: float) -> dict[str, Any]:
        """Write the selected samples as a feeds ``.npz`` and its sidecar; returns the sidecar (audited).

        Raises: NotFoundError (nothing selected), InvalidRequestError (samples of different inputs).
        """
        rows = self.find(q)
        if not rows:
            raise NotFoundError(f"no captured samples match {q.to_dict() or 'the query'}")
        arrays, names = stack_samples(rows)
        data = write_npz(arrays)
        sha = hashlib.sha256(data).hexdigest()
        sidecar = {
            "format": EXPORT_FORMAT,
            "fleet": self.fleet,
            "npz_sha256": sha,
            "query": q.to_dict(),
            "exported_at": now,
            "inputs": names,
            "count": len(rows),
            "labelled": sum(r.label is not None for r in rows),
            "samples": [_sample_info(r) for r in rows],
        }
        exports = self.root / "exports"
        atomic_write(exports / f"{sha}.npz", data)
        atomic_write(exports / f"{sha}.json", json.dumps(sidecar, sort_keys=True).encode())
        with self.store.db.tx() as conn:
            audit.record(conn, actor, "capture.export", f"capture/{self.fleet}", f"{len(rows)} samples {sha}")
        return sidecar

    def export_path(self, sha: str) -> Path:
        """Raises: NotFoundError."""
        path = self.root / "exports" / f"{sha}.npz"
        if not SHA256_RE.fullmatch(sha) or not path.is_file():
            raise NotFoundError(f"no export {sha[:64]!r}")
        return path


def _write_all(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write (atomically, durably) the samples not on disk yet, several at once: each write waits on its
    fsync, which releases the GIL, so a batch costs about one fsync instead of one per sample."""
    todo = [(path, data) for path, data in files if not path.exists()]
    if not todo:
        return
    todo[0][0].parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(WRITERS, len(todo)), thread_name_prefix="capture-write") as pool:
        list(pool.map(lambda item: atomic_write(*item), todo))  # (re-raises a failed write)


def _unlink(rows: Sequence[CaptureRow]) -> None:
    for row in rows:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(row.path)


def _claimed_id(data: bytes) -> str | None:
    """The id a refused sample claims, if any can be read (so the device can drop it)."""
    try:
        meta = load_sample(data)[1]
    except PayloadError:
        return None
    value = meta.get("id") if isinstance(meta, dict) else None
    return value if isinstance(value, str) and len(value) <= 64 else None


def _sample_info(r: CaptureRow) -> dict[str, Any]:
    keys = ("device", "id", "sku", "policy", "ts", "reason", "score", "top1", "conf", "label", "sha256")
    return {k: getattr(r, k) for k in keys} | {
        "model": f"{r.model_name}@{r.model_version}",
        "model_sha256": r.model_sha256,
    }


def load_sample(data: bytes) -> tuple[dict[str, np.ndarray], Any]:
    """A sample's arrays (``in0``…, ``out0``…) and metadata. Raises: PayloadError."""
    meta, arrays = read_sample(data, max_arrays=MAX_ARRAYS, max_bytes=MAX_SAMPLE_BYTES)
    if not isinstance(meta, dict):
        raise PayloadError("sample metadata must be an object")
    names_in, names_out = meta.get("inputs"), meta.get("outputs")
    if (
        not isinstance(names_in, list)
        or not isinstance(names_out, list)
        or len(arrays) != len(names_in) + len(names_out)
    ):
        raise PayloadError("sample metadata must name its inputs and outputs, one per array")
    named = {f"in{i}": a for i, a in enumerate(arrays[: len(names_in)])}
    return named | {f"out{i}": a for i, a in enumerate(arrays[len(names_in) :])}, meta


def stack_samples(rows: Sequence[CaptureRow]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The samples' inputs stacked as feeds (``x`` for one input, else one array per input name; a sample
    with a leading axis of 1 joins along it, others stack on a new axis) and ``y``: the labels that are
    class indices, -1 where a sample has none (the sidecar keeps every label as given).

    Raises: InvalidRequestError (the samples have different inputs or shapes).
    """
    names: list[str] | None = None
    parts: dict[str, list[np.ndarray]] = {}
    for row in rows:
        try:
            arrays, meta = load_sample(Path(row.path).read_bytes())
        except (OSError, PayloadError) as exc:
            raise InvalidRequestError(f"sample {row.device}/{row.id} is unreadable: {exc}") from None
        inputs = [str(n) for n in meta.get("inputs", [])]
        if names is None:
            names = inputs
        if inputs != names:
            raise InvalidRequestError(f"sample {row.device}/{row.id} has inputs {inputs}, others {names}")
        for i, name in enumerate(inputs):
            parts.setdefault(name, []).append(arrays[f"in{i}"])
    assert names is not None
    out: dict[str, np.ndarray] = {}
    for name, items in parts.items():
        if len({a.shape for a in items}) != 1:
            raise InvalidRequestError(f"input {name!r} has samples of different shapes; export fewer (--model)")
        joined = np.concatenate(items) if items[0].ndim and items[0].shape[0] == 1 else np.stack(items)
        out["x" if len(names) == 1 else name] = joined
    out["y"] = np.array([int(r.label) if r.label and r.label.isdigit() else -1 for r in rows], dtype=np.int64)
    return out, names
