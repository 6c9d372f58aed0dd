"""Power-cut safety: SIGKILL a real agent at ≥ 20 instants of deployments; it always recovers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from device_agent.bundle import PrivateKey
from fleet.broker import LocalBroker
from tests.support.powercut import Rig, run_power_cuts

KILL_POINTS = 21  # over every phase (the eighth: a trust update) in turn; `make bench` runs 200


def test_power_cuts_at_every_phase_leave_a_verified_model_and_valid_state(
    tmp_path: Path,
    broker: LocalBroker,
    tiny_models: dict[str, Path],
    release_key: PrivateKey,
    key_files: tuple[Path, Path],
) -> None:
    rig = Rig(tmp_path, broker.url, tiny_models, release_key, key_files[1])
    results = run_power_cuts(KILL_POINTS, 1234, rig)
    failures = [r for r in results if r.problem]
    assert not failures, failures
    assert len(results) == KILL_POINTS
    killed_in = Counter(r.killed_after for r in results)
    before_activation = (
        killed_in["DOWNLOADING"] + killed_in["VERIFYING"] + killed_in["INSTALLING"] + killed_in["SELFTEST"]
    )
    assert before_activation >= 3 and killed_in["PROBATION"] > 0, killed_in  # kills really landed in those phases
    assert {r.final for r in results} <= {"SUCCEEDED", "ROLLED_BACK", "FAILED", "REJECTED", "TRUSTED"}
    assert sum(r.target == "TRUST" for r in results) == 2  # trust.json was replaced under the kills too
