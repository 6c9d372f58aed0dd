"""Capture's throughput ratio per model and rule set, for comparing two trees of the agent.

    PYTHONPATH=<tree with the device_agent to measure>:. python -m bench.capture_ab [TAG]

prints one row of ``bench.capture.throughput`` per model at a 1 % capture rate, with the low-confidence threshold
at the 1st percentile, with the policy's default hourly cap, and without the CPU budget, each prefixed with TAG and
the tree measured.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import device_agent
from bench.agent import models
from bench.capture import Case, throughput
from device_agent.bundle import PrivateKey
from device_agent.capture.sampler import CPU_SHARE

CASES: tuple[tuple[str, float | None, int, float], ...] = (
    ("", None, 10**7, CPU_SHARE),
    (", low-conf at p1", 1.0, 10**7, CPU_SHARE),
    (", default cap 120/h", None, 120, CPU_SHARE),
    (", no CPU budget", None, 10**7, math.inf),
)


def main(tag: str) -> None:
    key = PrivateKey.generate()
    paths = models()
    tree = Path(device_agent.__file__).parent.parent
    with tempfile.TemporaryDirectory() as d:
        for name in ("mobilenetv2-96", "tiny-digits"):
            for i, (label, pct, cap, share) in enumerate(CASES):
                tmp = Path(d) / f"{name}-{i}"
                tmp.mkdir()
                row = throughput(name + label, paths[name], tmp, key, Case(0.01, cap, pct, share))[0]
                print(tag, tree, row, flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
