"""Summaries of simulated devices: counts by active model version and by update state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from device_agent.core import AgentCore


def count_agents(cores: Iterable[AgentCore | None]) -> tuple[dict[str, int], dict[str, int]]:
    """Running devices by active model version, and by update state (committed, deploying, probation)."""
    versions: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for core in cores:
        if core is None or core.engine is None:
            continue
        versions[core.engine.model.manifest.version] += 1
        s = core.updater.state
        states["probation" if s.probation else "deploying" if s.pending else "committed"] += 1
    return dict(versions), dict(states)


def merge_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary from the summaries of several worker processes."""
    out: dict[str, Any] = {"devices": 0, "versions": Counter(), "states": Counter(), "crashes": 0, "connected": 0}
    for part in parts:
        for key in ("devices", "crashes", "connected"):
            out[key] += part[key]
        out["versions"].update(part["versions"])
        out["states"].update(part["states"])
    return {**out, "versions": dict(out["versions"]), "states": dict(out["states"])}
