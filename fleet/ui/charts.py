"""Small inline SVG charts of a device's retained telemetry rollups (one point per minute). Pure: rollups in,
the numbers a template draws out. Inline SVG needs no script and no chart library, and passes the CSP."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT = 240, 48  # the chart's viewBox (it scales to its box)

# (title, unit, value of one rollup row or None)
SERIES: tuple[tuple[str, str, Any], ...] = (
    ("p95 latency", "ms", lambda r: r["lat_p95_sum"] / r["points"] if r["points"] else None),
    ("inferences/s", "", lambda r: r["ips_sum"] / r["points"] if r["points"] else None),
    ("confidence", "", lambda r: r["conf_sum"] / r["points"] if r["points"] else None),
    ("drift (PSI max)", "", lambda r: r["psi_max"]),
)


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    points: str  # the polyline's "x,y x,y …" in the viewBox
    last: float | None
    low: float | None
    high: float | None
    count: int
    end: tuple[str, str] = ("0", "0")  # the last point, marked (a single minute is a dot, not an invisible line)

    @property
    def summary(self) -> str:
        """What the chart shows, in words (its text alternative)."""
        if self.last is None:
            return f"{self.title}: no data"
        return (
            f"{self.title}: last {self.last:.3g}{self.unit}, range {self.low:.3g}-{self.high:.3g} over {self.count} min"
        )


def chart(title: str, unit: str, values: list[float | None]) -> Chart:
    """The polyline of ``values`` (None and non-finite values skipped) scaled into the viewBox."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not pts:
        return Chart(title, unit, "", None, None, None, 0)
    low, high = min(v for _, v in pts), max(v for _, v in pts)
    span_x = max(1, len(values) - 1)
    flat = high - low <= 1e-9 * max(1.0, abs(high))  # constant (up to rounding): a level line mid-height

    def y(v: float) -> float:
        return HEIGHT / 2 if flat else HEIGHT - 2 - (v - low) * (HEIGHT - 4) / (high - low)

    xy = [(f"{i * WIDTH / span_x:.1f}", f"{y(v):.1f}") for i, v in pts]
    coords = " ".join(f"{x},{yv}" for x, yv in xy)
    return Chart(title, unit, coords, pts[-1][1], low, high, len(pts), xy[-1])


def charts(rollups: list[dict[str, Any]]) -> list[Chart]:
    """One chart per series over ``rollups`` (oldest first)."""
    return [chart(title, unit, [fn(r) for r in rollups]) for title, unit, fn in SERIES]
