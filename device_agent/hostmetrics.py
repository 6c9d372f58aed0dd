"""Host metrics for telemetry and ``info``: CPU share, resident memory, temperature, total RAM.

Each reads what Linux exposes (``/proc``, ``/sys``) and degrades to a portable fallback or ``None``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CpuMeter:
    """This process's CPU use between two calls of ``percent`` (100 = one core)."""

    wall: float = field(default_factory=time.monotonic)
    cpu: float = field(default_factory=lambda: sum(os.times()[:2]))

    def percent(self) -> float:
        wall, cpu = time.monotonic(), sum(os.times()[:2])
        pct = 100.0 * (cpu - self.cpu) / max(wall - self.wall, 1e-6)
        self.wall, self.cpu = wall, cpu
        return round(pct, 2)


def rss_mb() -> float:
    """Resident set size in MB (the peak, where ``/proc`` is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 2)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)


def temperature_c() -> float | None:
    """The first readable thermal zone, in °C; None where there is none."""
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp")):
        try:
            return round(int(zone.read_text().strip()) / 1000, 1)
        except (OSError, ValueError):
            continue
    return None


def total_ram_bytes() -> int:
    """Physical memory in bytes; 0 when the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 0
