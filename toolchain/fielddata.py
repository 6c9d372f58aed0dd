"""Provenance of field data: when a calibration or evaluation file is a ``fleetctl capture export``, its
sidecar (``FILE.json``: the export's sha256, the query that selected it, how many samples) goes into the
quantization report and the bundle's provenance as ``field_data``, so a release built from captured data
says which data. A sidecar whose hash does not match the file is ignored (the file was changed since)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

EXPORT_FORMAT = "edgefleet-capture-export/1"  # fleet.capture.samples.EXPORT_FORMAT


def field_data(path: Path | None) -> dict[str, Any] | None:
    """The ``field_data`` provenance of ``path``, or None when it is not a (matching) capture export."""
    if path is None or not path.is_file():
        return None
    sidecar = path.with_name(path.name + ".json")
    try:
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or doc.get("npz_sha256") != digest:
        return None
    keys = ("npz_sha256", "query", "fleet", "count", "labelled", "exported_at")
    return {k: doc.get(k) for k in keys} | {"file": path.name}
