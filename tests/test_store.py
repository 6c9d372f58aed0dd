"""The store on SQLite and on PostgreSQL: migrations, devices, releases, rollouts, events, rollups, audit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from device_agent import protocol as P
from device_agent.protocol import DeploymentState as D
from fleet.errors import ConflictError, NotFoundError
from fleet.rollout.model import Deploy, Phase, RolloutSpec, RolloutState, Stage, Threshold, Transition
from fleet.store import NewRelease, ReleaseRow, RollupRow, Store
from fleet.store import tables as t

NOW = 1_700_000_000.0
INFO = P.Info("0.1.0", "tflite", "2.14.0", "pi4", "aarch64", 1 << 30, model=P.ModelRef("digits", "1.0.0", 1, "a" * 64))


def release_row(store: Store, version: str = "2.0.0") -> ReleaseRow:
    new = NewRelease(
        "digits", version, sequence=2, sha256="b" * 64, size=10, manifest={"name": "digits"}, artifact="/x.efb"
    )
    return store.releases.add(new, actor="alice")


def test_migrations_create_the_declared_schema_and_are_idempotent(store_url: str) -> None:
    store = Store(store_url)
    Store(store_url).close()  # a second open migrates nothing and fails nothing
    inspector = sa.inspect(store.engine)
    for table in t.metadata.sorted_tables:
        assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.c.keys()), table.name
    store.close()


def test_devices_register_update_and_tag(store_url: str) -> None:
    store = Store(store_url)
    store.devices.record_status("default", "cam-1", "online", NOW)
    store.devices.record_info("default", "cam-1", INFO, NOW + 1)
    row = store.devices.get("cam-1")
    assert (row.sku, row.status, row.model_version, row.info["hardware"]["arch"]) == (
        "pi4",
        "online",
        "1.0.0",
        "aarch64",
    )
    assert store.devices.tag("cam-1", ["lab", "b"], [], actor="bob") == ["b", "lab"]
    assert store.devices.tag("cam-1", [], ["b"], actor="bob") == ["lab"]
    with pytest.raises(NotFoundError):
        store.devices.tag("ghost", ["x"], [], actor="bob")
    with pytest.raises(NotFoundError):
        store.devices.get("ghost")
    assert [a.actor for a in store.audit.log("device/cam-1")] == ["bob", "bob"]
    store.close()


def test_release_twice_is_a_conflict_and_nothing_changes(store_url: str) -> None:
    store = Store(store_url)
    release_row(store)
    with pytest.raises(ConflictError):
        release_row(store)
    assert len(store.releases.all()) == 1
    with pytest.raises(NotFoundError):
        store.releases.get("digits", "9.9.9")
    store.close()


def test_rollout_transitions_are_compare_and_set(store_url: str) -> None:
    store = Store(store_url)
    spec = RolloutSpec("digits@2.0.0", 2, (Stage(Threshold(50.0)), Stage(Threshold(100.0))))
    rid = store.rollouts.create(release_row(store), spec, "alice", NOW)
    before = store.rollouts.get(rid)
    assert RolloutSpec.from_dict(before.spec) == spec
    pause = Transition(RolloutState.PAUSED, 0, Phase.DEPLOYING, "paused")
    assert store.rollouts.transition(rid, before, pause, "alice", NOW + 1)
    advance = Transition(RolloutState.RUNNING, 1, Phase.DEPLOYING, "stale tick")
    assert not store.rollouts.transition(rid, before, advance, "runner", NOW + 2)  # computed before the pause
    assert store.rollouts.get(rid).state == "PAUSED"
    assert [a.action for a in store.audit.log(f"rollout/{rid}")] == ["rollout.transition", "rollout.start"]
    store.close()


def test_deployments_events_and_unique_per_rollout_and_device(store_url: str) -> None:
    store = Store(store_url)
    spec = RolloutSpec("digits@2.0.0", 2, (Stage(Threshold(100.0)),))
    rid = store.rollouts.create(release_row(store), spec, "alice", NOW)
    store.deployments.record(rid, [Deploy("cam-1", "r1-cam-1", 0, 1)], NOW)
    with pytest.raises(sa.exc.IntegrityError):
        store.deployments.record(rid, [Deploy("cam-1", "r1-cam-1-x", 0, 1)], NOW)
    store.deployments.mark_sent(["r1-cam-1"], NOW + 1)
    ev = P.DeploymentEvent("r1-cam-1", D.DOWNLOADING, 1)
    assert store.deployments.apply_event("cam-1", ev, NOW + 2)
    assert not store.deployments.apply_event("cam-2", ev, NOW + 2)  # the event's device must own the deployment
    assert not store.deployments.apply_event("cam-1", P.DeploymentEvent("r9-unknown", D.SUCCEEDED, 1), NOW)
    assert store.deployments.apply_event("cam-1", P.DeploymentEvent("r1-cam-1", D.SUCCEEDED, 2), NOW + 3)
    assert not store.deployments.apply_event("cam-1", P.DeploymentEvent("r1-cam-1", D.INSTALLING, 3), NOW + 4)  # stale
    view = store.deployments.views(rid)["cam-1"]
    assert (view.state, view.sent_at, view.finished_at) == (D.SUCCEEDED, NOW + 1, NOW + 3)
    assert not store.deployments.apply_event(
        "cam-1", P.DeploymentEvent("r1-cam-1", D.FAILED, 4, "no-previous"), NOW + 4
    )
    store.deployments.record(rid, [Deploy("cam-1", "r1-cam-1-a2", 0, 2)], NOW + 5)
    assert store.deployments.views(rid)["cam-1"].attempts == 2
    store.deployments.mark_timed_out("r1-cam-1-a2", NOW + 6)
    assert store.deployments.apply_event(
        "cam-1", P.DeploymentEvent("r1-cam-1-a2", D.SUCCEEDED, 5), NOW + 7
    )  # slow, not dead
    assert store.deployments.views(rid)["cam-1"].state is D.SUCCEEDED
    store.close()


def test_rollups_merge(store_url: str) -> None:
    store = Store(store_url)
    r = RollupRow("cam-1", 28_333_333, 2, 100.0, 1.0, 20.0, 10.0, 6.0, 1.8, 0.1)
    store.rollups.add([r])
    store.rollups.add([RollupRow("cam-1", 28_333_333, 1, 50.0, 0.0, 10.0, 9.0, 9.0, 0.9, 0.05)])
    (row,) = store.rollups.for_device("cam-1")
    assert (row.points, row.inferences, row.lat_p95_max, row.psi_max) == (3, 150.0, 9.0, 0.1)
    store.close()


def test_concurrent_rollup_flushes_of_the_same_rows_neither_deadlock_nor_lose_points(store_url: str) -> None:
    """Two writers (two managers, or two flushing threads of one) merging the same (device, minute) rows in
    opposite orders: rows are written in one lock order, so they queue instead of deadlocking."""
    import threading

    rows = [RollupRow(f"dev-{i:03d}", 28_333_333, 1, 1.0, 0.0, 1.0, 1.0, 1.0, 0.5, 0.0) for i in range(200)]
    stores = [Store(store_url), Store(store_url)]
    stores[0].rollups.add(rows)  # the rows exist: every later add is an UPDATE (row locks)
    failures: list[BaseException] = []

    def writer(store: Store, batch: list[RollupRow]) -> None:
        try:
            for _ in range(15):
                store.rollups.add(batch)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(st, b)) for st, b in zip(stores, (rows, rows[::-1]), strict=True)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures, failures[0]
    assert {r.points for r in (stores[0].rollups.for_device(f"dev-{i:03d}")[0] for i in (0, 99, 199))} == {31}
    for st in stores:
        st.close()


def test_one_process_leads_rollouts_and_another_takes_over_when_its_lease_expires(store_url: str) -> None:
    a, b = Store(store_url), Store(store_url)
    assert a.leases.acquire("rollouts", "default/main", NOW, ttl=10)
    assert not b.leases.acquire("rollouts", "default/second", NOW + 1, ttl=10)
    assert a.leases.acquire("rollouts", "default/main", NOW + 5, ttl=10)  # renewed until NOW + 15
    assert not b.leases.acquire("rollouts", "default/second", NOW + 14, ttl=10)
    assert b.leases.holder("rollouts", NOW + 14) == "default/main"
    assert b.leases.acquire("rollouts", "default/second", NOW + 16, ttl=10)  # main stopped renewing
    assert not a.leases.acquire("rollouts", "default/main", NOW + 17, ttl=10)
    a.close()
    b.close()
