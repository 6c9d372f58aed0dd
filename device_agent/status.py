"""The status document: what ``edge-agent status --json`` prints, whether or not the agent runs."""

from __future__ import annotations

from typing import Any

from device_agent.bundle import read_bundle
from device_agent.capture.policy import stored_summary
from device_agent.errors import EdgefleetError
from device_agent.home import DeviceState, Home
from device_agent.trust_store import summary as trust_summary


def status_document(home: Home, state: DeviceState, runtime_version: str | None = None) -> dict[str, Any]:
    """The active slot, its model and the update state of the device in ``home``."""
    doc: dict[str, Any] = {
        "active_slot": state.active,
        "previous_slot": state.previous,
        "state": "probation" if state.probation else ("deploying" if state.pending else "committed"),
        "committed_sequences": state.committed,
        "probation": None,
        "pending": state.pending.deployment_id if state.pending else None,
        "model": None,
        "trust": trust_summary(home),  # None: plain keys (trust/*.pub)
        "capture": {"enabled": False, "policy": stored_summary(home.root / "capture")},  # the agent's live view
    }
    if state.probation:
        pr = state.probation
        doc["probation"] = {
            "deployment_id": pr.deployment_id,
            "version": pr.version,
            "started_ms": pr.started_ms,
            "boots": pr.boots,
        }
    try:
        m = read_bundle(home.slot(state.active).read_bytes()).manifest
        doc["model"] = {
            "name": m.name,
            "version": m.version,
            "sequence": m.sequence,
            "sha256": m.model.sha256,
            "runtime": m.runtime.name,
        }
        if runtime_version:
            doc["model"]["runtime_version"] = runtime_version
    except (OSError, EdgefleetError) as exc:
        doc["error"] = str(exc)
    return doc
