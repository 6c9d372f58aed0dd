"""`make demo DEMO_ARGS=--loop` (scripts/demo_loop.py): the field data loop tells its story and exits 0.

Reuses the session's tiny-digits build (``--models``); the demo itself quantizes, packages, signs, runs the
broker, the fleet manager and the simulated fleet, captures, exports, recalibrates and rolls out.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import processes_mentioning

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
BEFORE_AFTER = re.compile(r"sku b: conf_mean ([0-9.]+) → ([0-9.]+), psi_max ([0-9.]+) → ([0-9.]+)")


def test_the_loop_captures_recalibrates_and_rolls_out(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    workdir = tmp_path / "demo"
    models = tiny_models["onnx"].parent
    argv = [sys.executable, "scripts/demo.py", "--loop", "--fast", "--models", str(models), "--workdir", str(workdir)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    for step in ("fleetctl capture enable --selector sku=b", "fleetctl capture export", "--calibration", "SUCCEEDED"):
        assert step in out, f"{step!r} missing from the demo's output"
    assert "'query': {'model': 'digits@1.0.0'}" in out  # the release's provenance names the export
    match = BEFORE_AFTER.search(out)
    assert match is not None, out[-3000:]
    conf_before, conf_after, psi_before, psi_after = map(float, match.groups())
    assert psi_after < psi_before / 2  # the new release's references are the field's: its drift is gone
    assert "every process it started has stopped" in out and not processes_mentioning(str(workdir))
    print(f"sku b: conf_mean {conf_before} -> {conf_after}, psi_max {psi_before} -> {psi_after}")
