"""A rollout the model-health gate aborted still shows the gate's evidence on its console page: read back
from the abort reason (``fleet.ui.gate_evidence``), which must follow ``MetricEvidence.describe()``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from fleet.broker import LocalBroker
from fleet.rollout.evidence import MetricEvidence, Outcome, Verdict
from fleet.rollout.model import Phase, RolloutState, Transition
from fleet.ui.gate_evidence import PREFIX, from_reason
from tests.support.console import sign_in
from tests.support.fleet_harness import TOKEN, Harness, add_release, running_fleet, wait_until
from tests.support.scripted_device import ScriptedDevice, start_fleet

OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)
SLOW = MetricEvidence(
    "b", "p95 latency", Outcome.FAIL, (3, 2), (40, 31), 30.5, 10.25, 2.9756, 1.5, 1.2247, "mann-whitney-u",
    1180.0, 0.00012, deff=1.8, alpha=0.0033, streak=3,
)  # fmt: skip
UNSURE = MetricEvidence(
    "b", "confidence", Outcome.FAIL, (3, 2), (40, 31), 0.41, 0.93, 0.52, 0.1, 0.05, "mann-whitney-u",
    1230.5, 3.4e-7, streak=3,
)  # fmt: skip
PASSING = MetricEvidence("a", "drift", Outcome.PASS, (2, 2), (20, 20), 0.01, 0.02, -0.01, 0.25, 0.125, "m", 1.0, 0.9)


def reason() -> str:
    """The reason the rollout engine gives an abort by the gate: the verdict's failures, described."""
    return PREFIX + Verdict((SLOW, PASSING, UNSURE), consecutive=3).reason()


def test_the_abort_reason_reads_back_as_the_failed_comparisons() -> None:
    rows = from_reason(reason())
    assert [(r["sku"], r["metric"], r["outcome"]) for r in rows] == [
        ("b", "p95 latency", "fail"),
        ("b", "confidence", "fail"),
    ]
    slow, unsure = rows
    assert (slow["updated"], slow["baseline"], slow["effect"], slow["threshold"]) == (30.5, 10.25, 2.98, 1.5)
    assert (slow["p_value"], slow["deff"], slow["devices"], slow["windows"]) == (0.00012, 1.8, (3, 2), (40, 31))
    assert (unsure["effect"], unsure["threshold"], unsure["statistic"], unsure["p_value"]) == (
        0.52,
        0.1,
        1230.5,
        3.4e-7,
    )
    assert unsure["deff"] == 1.0 and unsure["streak"] == 3 and slow["alpha"] == 0.0033 and unsure["alpha"] == 0.0
    before = reason().replace(" at level 0.0033)", ")").replace(" at level 0)", ")")  # a reason from before the level
    assert [r["alpha"] for r in from_reason(before)] == [None, None] and len(from_reason(before)) == 2
    assert from_reason("aborted by alice") == [] and from_reason(reason()[:120]) == []  # cut off: left out


@pytest.fixture
def fleet(broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path]) -> Iterator[Harness]:
    with running_fleet(broker.url, tmp_path, key_files[1]) as h:
        yield h


@pytest.fixture
def devices(broker: LocalBroker, fleet: Harness) -> Iterator[list[ScriptedDevice]]:
    started = start_fleet(broker.url, "default", {"a": 1, "b": 2}, OLD)
    wait_until(lambda: len(fleet.api.get("/devices")) == 3, 30, "3 devices registered")
    yield started
    for d in started:
        d.stop()


def test_an_aborted_rollout_page_shows_the_gate_evidence_its_reason_recorded(
    fleet: Harness, devices: list[ScriptedDevice], tmp_path: Path, release_key: PrivateKey
) -> None:
    add_release(fleet, tmp_path, release_key, "2.0.0", 2)
    rid = fleet.api.post("/rollouts", {"release": "digits@2.0.0", "stages": ["1", "100%"], "approval": True})["id"]
    store = fleet.server.store
    wait_until(lambda: store.rollouts.get(rid).state == "WAITING_APPROVAL", 60, "stage 1 to wait for approval")
    client, _ = sign_in(fleet.url, TOKEN)
    assert 'id="health-recorded"' not in client.get(f"/ui/rollouts/{rid}").text
    row = store.rollouts.get(rid)
    # the transition the engine makes when the gate trips (tests/test_rollout_engine.py covers the decision)
    abort = Transition(RolloutState.ABORTED, row.stage, Phase(row.phase), reason())
    assert store.rollouts.transition(rid, row, abort, "rollout-runner", time.time())
    page = client.get(f"/ui/rollouts/{rid}").text
    assert 'id="health-recorded"' in page
    table = page.split('id="health"')[1].split("</table>", maxsplit=1)[0]
    assert table.count('class="outcome-fail"') == 2 and "p95 latency" in table and "confidence" in table
    assert "30.5" in table and "10.2" in table and "2.98" in table and "0.00012" in table and "3/2" in table
