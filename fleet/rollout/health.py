"""Model-health comparison: the updated cohort against not-yet-updated devices of the same sku. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from statistics import fmean

from device_agent.protocol import DeploymentState
from fleet.rollout.model import DeploymentView, DeviceView, Health, HealthGate


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def cohorts(
    devices: Iterable[DeviceView], deployments: dict[str, DeploymentView], settle_s: float = 0.0
) -> dict[str, tuple[list[Health], list[Health]]]:
    """Per sku: (updated, baseline) health points.

    Updated devices count only with a point at least ``settle_s`` newer than their deployment's
    success, so neither old-model numbers nor a fresh model's first noisy window stand in for it.
    """
    out: dict[str, tuple[list[Health], list[Health]]] = {}
    for dev in devices:
        if dev.health is None:
            continue
        updated, baseline = out.setdefault(dev.sku, ([], []))
        dep = deployments.get(dev.id)
        if dep is None:
            baseline.append(dev.health)
        elif dep.state is DeploymentState.SUCCEEDED and dev.health.ts >= (dep.finished_at or 0.0) + settle_s:
            updated.append(dev.health)
    return out


def compare(updated: list[Health], baseline: list[Health], gate: HealthGate) -> list[str]:
    """The reasons the updated cohort looks worse than the baseline; empty when it does not."""
    problems: list[str] = []
    err_u, err_b = _mean(h.error_rate for h in updated), _mean(h.error_rate for h in baseline)
    if err_u is not None and err_b is not None and err_u - err_b > gate.max_error_rate_increase:
        problems.append(f"error rate {err_u:.3f} vs {err_b:.3f} (max +{gate.max_error_rate_increase:g})")
    p95_u, p95_b = _mean(h.lat_p95_ms for h in updated), _mean(h.lat_p95_ms for h in baseline)
    if p95_u is not None and p95_b and p95_u / p95_b > gate.max_p95_ratio and p95_u - p95_b > gate.min_p95_delta_ms:
        problems.append(f"p95 latency {p95_u:.1f} ms vs {p95_b:.1f} ms (max ratio {gate.max_p95_ratio:g})")
    psi_u = _mean(h.psi_max for h in updated)
    if psi_u is not None and psi_u > gate.max_psi:
        problems.append(f"drift psi {psi_u:.3f} (max {gate.max_psi:g})")
    conf_u, conf_b = _mean(h.conf_mean for h in updated), _mean(h.conf_mean for h in baseline)
    if conf_u is not None and conf_b is not None and conf_b - conf_u > gate.max_conf_drop:
        problems.append(f"mean confidence {conf_u:.3f} vs {conf_b:.3f} (max drop {gate.max_conf_drop:g})")
    return problems


def health_problems(
    devices: Iterable[DeviceView], deployments: dict[str, DeploymentView], gate: HealthGate
) -> list[str]:
    """Every sku where both cohorts have ``gate.min_devices`` and the updated one looks worse."""
    problems: list[str] = []
    for sku, (updated, baseline) in sorted(cohorts(devices, deployments, gate.settle_s).items()):
        if len(updated) >= gate.min_devices and len(baseline) >= gate.min_devices:
            problems += [f"sku {sku}: {p}" for p in compare(updated, baseline, gate)]
    return problems
