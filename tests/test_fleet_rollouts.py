"""Rollouts end to end over a real Mosquitto and real HTTP, with scripted stand-in devices.

Stand-in devices (tests/support/scripted_device.py): they download the artifact from the fleet
manager, read its manifest, and answer with events; failures are injected per sku.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from device_agent.protocol import DeploymentState as D
from fleet.broker import LocalBroker
from fleet.cli import cli
from fleet.rollout.evidence import METRICS
from tests.support.fleet_harness import TOKEN, Harness, add_release, running_fleet, wait_until
from tests.support.scripted_device import ScriptedDevice, start_fleet

OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)
SKUS = {"pi4": 4, "jetson": 4, "esp": 4}


@pytest.fixture
def fleet_env(broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path]) -> Iterator[Harness]:
    with running_fleet(broker.url, tmp_path, key_files[1]) as h:
        yield h


def devices_up(h: Harness, devices: list[ScriptedDevice]) -> None:
    wait_until(
        lambda: sum(1 for d in h.api.get("/devices") if d["sku"] and d["status"] == "online") == len(devices),
        what="every device registered",
    )


def finished(h: Harness, rid: int, *states: str) -> dict[str, object]:
    return wait_until(
        lambda: (s := h.api.get(f"/rollouts/{rid}"))["state"] in states and s, what=f"rollout in {states}"
    )


@contextmanager
def scripted(h: Harness, broker: LocalBroker, **kw: Any) -> Iterator[list[ScriptedDevice]]:
    """12 stand-in devices on digits 1.0.0, registered with the fleet manager; stopped afterwards."""
    devices = start_fleet(broker.url, "default", SKUS, OLD, **kw)
    try:
        devices_up(h, devices)
        yield devices
    finally:
        for d in devices:
            d.stop()
    assert not [e for d in devices for e in d.errors]


def fleetctl_cli(h: Harness, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--server", h.url, *args], env={"FLEETCTL_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    return result.output


def start_rollout(h: Harness, tmp: Path, key: PrivateKey, **body: Any) -> int:
    """Add digits 2.0.0 and roll it out with ``body`` (stages, gates, …); returns the rollout id."""
    add_release(h, tmp, key, "2.0.0", 2)
    return int(h.api.post("/rollouts", {"release": "digits@2.0.0", **body})["id"])


def test_failures_on_one_sku_trip_the_gate_and_every_changed_device_rolls_back(
    fleet_env: Harness, broker: LocalBroker, tmp_path: Path, release_key: PrivateKey
) -> None:
    h = fleet_env
    fault = lambda sku, rel: (D.ROLLED_BACK, "selftest-mismatch") if sku == "esp" and rel == "digits@2.0.0" else None  # noqa: E731
    with scripted(h, broker, fault=fault) as devices:
        rid = start_rollout(
            h, tmp_path, release_key, stages=["10%", "50%", "100%"], gates={"failure": "20%", "retries": 0}
        )
        status = finished(h, rid, "ABORTED")
        assert "failure threshold 20% tripped: 1 of 3" in str(status["reason"])
        deps = h.api.get(f"/rollouts/{rid}/deployments")
        assert sorted(d["device_id"].split("-")[0] for d in deps) == ["esp", "jetson", "pi4"]  # one per sku, no more
        changed = {d["device_id"] for d in deps if d["device_id"].split("-")[0] != "esp"}
        wait_until(
            lambda: all(d["state"] == "ROLLED_BACK" for d in h.api.get(f"/rollouts/{rid}/deployments")),
            what="rollbacks confirmed",
        )
        told = {d.device_id for d in devices if any(kind == P.CMD_ROLLBACK for kind, _ in d.received)}
        assert told == changed
        assert all(d.model == OLD for d in devices)  # every device on its previous version

        def fleet_back() -> bool:
            rows = h.api.get("/devices")
            return len(rows) == 12 and all(r["model_version"] == "1.0.0" for r in rows)

        wait_until(fleet_back, what="the fleet view back on 1.0.0")
        actors = {a["actor"] for a in h.api.get(f"/rollouts/{rid}/audit")}
        assert actors == {"alice", "runner"}


def test_a_clean_release_completes_on_every_device_once(
    fleet_env: Harness, broker: LocalBroker, tmp_path: Path, release_key: PrivateKey
) -> None:
    h = fleet_env
    with scripted(h, broker) as devices:
        rid = start_rollout(h, tmp_path, release_key, stages=["5%", "25%", "100%"])
        status = finished(h, rid, "SUCCEEDED", "ABORTED")
        assert status["state"] == "SUCCEEDED", status["reason"]
        assert status["progress"] == {"SUCCEEDED": 12, "targeted": 12}
        assert all(d.model.version == "2.0.0" and len(d.acted_on) == 1 for d in devices)
        stages = [a["detail"] for a in reversed(h.api.get(f"/rollouts/{rid}/audit")) if a["actor"] == "runner"]
        assert [s.split(": ")[1] for s in stages] == [
            "stage 1 deployed",
            "stage 1 baked",
            "stage 2 deployed",
            "stage 2 baked",
            "stage 3 deployed",
            "last stage baked",
        ]


def test_pause_resume_and_manual_approval(
    fleet_env: Harness, broker: LocalBroker, tmp_path: Path, release_key: PrivateKey
) -> None:
    h = fleet_env
    with scripted(h, broker, step_delay=0.1) as devices:
        rid = start_rollout(
            h, tmp_path, release_key, stages=["25%", "100%"], approval=True, gates={"max_concurrent": 2}
        )
        finished(h, rid, "WAITING_APPROVAL")
        assert len(h.api.get(f"/rollouts/{rid}/deployments")) == 3  # the stage, and no more, until approved
        assert h.api.post(f"/rollouts/{rid}/approve")["state"] == "RUNNING"
        wait_until(lambda: len(h.api.get(f"/rollouts/{rid}/deployments")) > 3, what="stage 2 under way")
        assert h.api.post(f"/rollouts/{rid}/pause")["state"] == "PAUSED"
        in_flight = lambda: [d for d in h.api.get(f"/rollouts/{rid}/deployments") if d["state"] != "SUCCEEDED"]  # noqa: E731
        wait_until(lambda: not in_flight(), what="in-flight deployments to finish while paused")
        held = len(h.api.get(f"/rollouts/{rid}/deployments"))
        h.server.runner.step()  # a tick while paused sends nothing
        h.server.runner.step()
        assert len(h.api.get(f"/rollouts/{rid}/deployments")) == held < 12
        assert h.api.post(f"/rollouts/{rid}/resume")["state"] == "RUNNING"
        assert finished(h, rid, "SUCCEEDED", "ABORTED")["state"] == "SUCCEEDED"
        assert all(d.model.version == "2.0.0" for d in devices)


def test_model_health_gate_trips_on_one_skus_latency_and_rolls_back(
    fleet_env: Harness, broker: LocalBroker, tmp_path: Path, release_key: PrivateKey
) -> None:
    """Installs succeed everywhere, but on jetson the new model is 3x slower than jetsons still on 1.0.0."""
    h = fleet_env

    def telemetry(sku: str, release: str) -> dict[str, float]:
        slow = sku == "jetson" and release == "digits@2.0.0"
        return {"lat_p95_ms": 30.0 if slow else 10.0, "conf_mean": 0.9, "psi_max": 0.02}

    with scripted(h, broker, telemetry_for=telemetry, telemetry_interval=0.2) as devices:
        wait_until(lambda: all(h.server.ingest.health(d.device_id) for d in devices), what="baseline telemetry")
        gates = {"bake_s": 30, "max_p95_ratio": 1.5, "health_settle_s": 0.5, "health_interval_s": 0.2}
        rid = start_rollout(h, tmp_path, release_key, stages=["25%", "100%"], gates=gates)
        status = finished(h, rid, "ABORTED", "SUCCEEDED")
        assert status["state"] == "ABORTED"
        reason = str(status["reason"])
        assert reason.startswith("model health: sku jetson: p95 latency 30.000 vs 10.000 (x3.00, effect size x1.5; U=")
        assert "1/3 devices" in reason and "3 failed evaluations in a row" in reason
        assert "pi4" not in reason and "esp" not in reason
        wait_until(lambda: all(d.model == OLD for d in devices), what="every device back on 1.0.0")
        assert len(h.api.get(f"/rollouts/{rid}/deployments")) == 3  # stage 2 never started


def test_rollout_status_shows_the_health_evidence_per_sku_and_metric(
    fleet_env: Harness, broker: LocalBroker, tmp_path: Path, release_key: PrivateKey
) -> None:
    """A good release waits for approval after stage 1: its evidence, in the API and as `rollout status`'s table."""
    h = fleet_env
    telemetry = lambda sku, release: {"lat_p95_ms": 10.0, "lat_p50_ms": 5.0, "conf_mean": 0.9}  # noqa: E731
    with scripted(h, broker, telemetry_for=telemetry, telemetry_interval=0.2):
        gates = {"bake_s": 1, "health_settle_s": 0.2, "health_interval_s": 0.2}
        rid = start_rollout(h, tmp_path, release_key, stages=["25%", "100%"], gates=gates, approval=True)
        status = finished(h, rid, "WAITING_APPROVAL", "ABORTED")
        assert status["state"] == "WAITING_APPROVAL", status["reason"]
        by_key = {(e["sku"], e["metric"]): e for e in status["health"]}
        assert set(by_key) == {(s, m.name) for s in SKUS for m in METRICS}
        p95 = by_key[("jetson", "p95 latency")]
        assert p95["outcome"] == "pass" and p95["devices"] == [1, 3] and p95["windows"][0] >= 5
        assert p95["test"] == "mann-whitney-u" and p95["threshold"] == 1.5 and p95["streak"] == 0
        assert p95["deff"] == 1.0  # identical windows everywhere: nothing clustered in devices
        assert by_key[("esp", "drift")]["note"] == "not reported"
        out = fleetctl_cli(h, "rollout", "status", str(rid))
        assert "SKU     METRIC       OUTCOME" in out and " DEFF " in out and " LEVEL " in out
        assert p95["alpha"] == pytest.approx(0.05 / sum(e["p_value"] is not None for e in status["health"]))
        assert any(line.split()[:4] == ["jetson", "p95", "latency", "pass"] for line in out.splitlines())


def test_a_second_fleet_manager_takes_over_rollouts_when_the_leader_stops(
    broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path], release_key: PrivateKey
) -> None:
    """Two processes on one store: one leads (lease); stop it mid-rollout and the other finishes the job."""
    with ExitStack() as stack:
        kw = {"lease_ttl": 1.0, "db": f"sqlite:///{tmp_path / 'shared.db'}"}
        a = stack.enter_context(running_fleet(broker.url, tmp_path / "a", key_files[1], instance="a", **kw))
        b = stack.enter_context(running_fleet(broker.url, tmp_path / "b", key_files[1], instance="b", **kw))
        leader = wait_until(lambda: a.api.get("/health")["rollout_leader"], what="a leader")
        first, second = (a, b) if leader == "default/a" else (b, a)
        with scripted(first, broker, step_delay=0.1) as devices:
            rid = start_rollout(
                first, tmp_path, release_key, stages=["25%", "50%", "100%"], gates={"max_concurrent": 2}
            )
            wait_until(lambda: len(first.api.get(f"/rollouts/{rid}/deployments")) >= 2, what="stage 1 under way")
            first.server.stop.set()  # the leader stops stepping (its lease is no longer renewed)
            wait_until(
                lambda: second.api.get("/health")["rollout_leader"] == second.server.runner.holder,
                15,
                "the other process to lead",
            )
            assert finished(second, rid, "SUCCEEDED", "ABORTED")["state"] == "SUCCEEDED"
            assert all(d.model.version == "2.0.0" and len(d.acted_on) == 1 for d in devices)
