"""What a simulation runs: the devices, their skus, the faults to inject, and how device homes are made."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from device_agent.config import ProbationSection, TelemetrySection
from device_agent.errors import ConfigError

if TYPE_CHECKING:
    from device_agent.home import Home

FAULT_RE = re.compile(
    r"(?P<release>[a-z0-9][a-z0-9-]*@[0-9A-Za-z.+-]+)(?::(?P<sku>[a-z0-9-]+))?="
    r"(?:(?P<kind>selftest|slow|crash)|(?P<valued>slower|errors|lowconf|drift):(?P<value>[0-9]+(?:\.[0-9]+)?))"
)
FAULT_FORMS = "selftest|slow|crash|slower:F|errors:R|lowconf:D|drift:S"
# the valid range of each valued fault: (lowest, highest)
FAULT_RANGES = {"slower": (1.0, 100.0), "errors": (0.0, 1.0), "lowconf": (0.0, 1.0), "drift": (0.0, 100.0)}
# The latency gate is a budget, not a ratio: simulated models take a fraction of a millisecond, and on a
# loaded machine a 3x ratio over a 0.1 ms baseline trips on noise; the "slow" fault adds 50 ms, over the 40 ms
# budget, which a busy machine's scheduling and `--noise` stalls (5 ms and up, 2 % of inferences) stay under.
# The error gate tolerates a quarter: `--noise` error bursts (about 5 errors in 10 inferences) and the subtle `errors:R`
# regressions are for the fleet's health gate to judge, not for one device's 20-inference probation.
SIM_PROBATION = ProbationSection(
    min_inferences=20, seconds=15.0, max_error_rate=0.25, latency_budget_ms=40.0, max_latency_ratio=0.0
)
AGENT_MODE_MAX = 200  # devices up to which `--mode auto` runs full agents (4 threads each)


@dataclass(frozen=True)
class Fault:
    release: str  # NAME@VERSION
    sku: str | None  # None: every sku
    kind: str  # selftest | slow | crash | slower | errors | lowconf | drift
    value: float = 0.0  # slower: latency factor; errors: added error rate; lowconf: confidence drop; drift: sigmas

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``NAME@VERSION[:SKU]=KIND`` with KIND one of ``FAULT_FORMS``. Raises: ConfigError."""
        m = FAULT_RE.fullmatch(spec.strip())
        if not m:
            raise ConfigError(f"bad fault {spec[:120]!r}: expected NAME@VERSION[:SKU]={FAULT_FORMS}")
        if m["kind"]:
            return cls(m["release"], m["sku"], m["kind"])
        kind, value = m["valued"], float(m["value"])
        low, high = FAULT_RANGES[kind]
        if not low <= value <= high:
            raise ConfigError(f"bad fault {spec[:120]!r}: {kind} must be between {low:g} and {high:g}")
        return cls(m["release"], m["sku"], kind, value)


@dataclass
class SimulationConfig:
    devices: int
    fleet: str
    broker: str
    bundle: Path
    trust: list[Path]
    skus: tuple[str, ...] = ("sim",)
    faults: tuple[Fault, ...] = ()
    offline_rate: float = 0.0  # fraction of devices that are offline at any moment (rotating outages)
    workdir: Path | None = None
    telemetry_interval_s: float = 5.0
    replay_rate: float = 5.0  # inferences per second per device
    slow_extra_s: float = 0.05  # added latency for the "slow" fault
    noise: float = 0.0  # field noise on every device: stall probability per inference (see fleet.sim.noise)
    probation: ProbationSection = SIM_PROBATION
    seed: int = 0
    id_prefix: str = "sim"


def provision_device(c: SimulationConfig, root: Path, i: int) -> tuple[str, str, Home]:
    """Device ``i``'s id, sku and home (the initial bundle committed in slot A), as ``edgetool flash`` does."""
    from device_agent.provision import FlashOptions, flash

    device_id = f"{c.id_prefix}-{i:05d}"
    sku = c.skus[i % len(c.skus)]
    sections = {
        "probation": c.probation,
        "telemetry": TelemetrySection(interval_s=c.telemetry_interval_s, spool_max_points=100),
    }
    opts = FlashOptions(
        device_id=device_id,
        broker=c.broker,
        trust=c.trust,
        fleet=c.fleet,
        sku=sku,
        telemetry_interval_s=c.telemetry_interval_s,
        replay_rate=c.replay_rate,
        force=True,
        extra=sections,
    )
    return device_id, sku, flash(c.bundle, root / device_id, opts)


def pick_mode(mode: str, devices: int, processes: int) -> str:
    """``agents`` (a full ``Agent`` per device) or ``lean`` (many devices per thread, see ``fleet.sim.lean``)."""
    if mode != "auto":
        return mode
    return "agents" if devices <= AGENT_MODE_MAX and processes == 1 else "lean"
