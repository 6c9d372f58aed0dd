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

CASES: tuple[tuple[str, Case], ...] = (
    ("", Case()),
    (", low-conf at p1", Case(low_pct=1)),
    (", default cap 120/h", Case(max_per_hour=120)),
    (", no CPU budget", Case(cpu_share=math.inf)),
)


def main(tag: str) -> None:
    key = PrivateKey.generate()
    paths = models()
    tree = Path(device_agent.__file__).parent.parent
    with tempfile.TemporaryDirectory() as d:
        for name in ("mobilenetv2-96", "tiny-digits"):
            for i, (label, case) in enumerate(CASES):
                tmp = Path(d) / f"{name}-{i}"
                tmp.mkdir()
                row = throughput(name + label, paths[name], tmp, key, case)[0]
                print(tag, tree, row, flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
