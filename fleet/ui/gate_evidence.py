"""The model-health gate's evidence of a rollout it aborted, read back from the abort reason.

``FleetService.status`` computes the gate's evidence only while a rollout is active (afterwards its devices
roll back and a fresh evaluation would compare other windows), but the abort reason keeps the failed
comparisons' numbers, one ``MetricEvidence.describe()`` each. Hand-written: that one-line format is our own
and no library reads it; keeping the evidence as rows would need a new column (a migration) for what the
reason already says. ``tests/test_console_gate_evidence.py`` round-trips ``describe()`` so the two stay in step.
"""

from __future__ import annotations

import re
from typing import Any

PREFIX = "model health: "  # fleet.rollout.engine: the reason of an abort by the model-health gate
NUM = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)"
DESCRIBED = re.compile(
    rf"sku (?P<sku>\S+): (?P<metric>[a-z0-9 ]+?) (?P<updated>{NUM}) vs (?P<baseline>{NUM}) "
    rf"\(x?(?P<effect>{NUM}), effect size x?(?P<threshold>{NUM}); U=(?P<u>{NUM}) p=(?P<p>{NUM}) "
    rf"DEFF=(?P<deff>{NUM}), (?P<d0>\d+)/(?P<d1>\d+) devices, (?P<w0>\d+)/(?P<w1>\d+) windows, "
    rf"(?P<streak>\d+) failed evaluations in a row(?: at level (?P<alpha>{NUM}))?\)"
)


def from_reason(reason: str) -> list[dict[str, Any]]:
    """The failed comparisons an abort reason names, as rows of the evidence table (``[]`` when the gate did
    not abort the rollout). A comparison cut off by the reason's length limit is left out."""
    if not reason.startswith(PREFIX):
        return []
    return [
        {
            "sku": m["sku"],
            "metric": m["metric"],
            "outcome": "fail",
            "updated": float(m["updated"]),
            "baseline": float(m["baseline"]),
            "effect": float(m["effect"]),
            "threshold": float(m["threshold"]),
            "statistic": float(m["u"]),
            "p_value": float(m["p"]),
            "deff": float(m["deff"]),
            "devices": (int(m["d0"]), int(m["d1"])),
            "windows": (int(m["w0"]), int(m["w1"])),
            "streak": int(m["streak"]),
            "alpha": float(m["alpha"]) if m["alpha"] else None,  # reasons written before the level was named lack it
            "note": f"{m['streak']} failed evaluations in a row; recorded at the abort",
        }
        for m in DESCRIBED.finditer(reason)
    ]
