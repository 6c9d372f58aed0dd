"""The fleet manager beyond one machine: 3 `fleetctl serve` processes on one PostgreSQL database and a
real 3-node NATS cluster (MQTT 3.1.1, JetStream), scripted devices spread over the nodes by the hash of
their ids (`--broker URL1,URL2,URL3`).

- kill -9 of the rollout leader mid-rollout: another manager takes the lease, the rollout completes,
  no device gets two deployments, no stage is skipped (the audit log);
- kill -9 of a broker node mid-rollout: its devices reconnect to the others, every device gets its
  command (QoS 1), the rollout completes; the telemetry lost (QoS 0) is counted and within the policy;
- 2,000 telemetry points a second through the three nodes: each stored once across the managers.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from device_agent.mqtt import MqttClient, MqttConfig
from tests.support.bundles import simple_bundle
from tests.support.cluster_harness import LEASE_TTL, Managers, managers, pg_database, stored_points, timed
from tests.support.fleet_harness import wait_until
from tests.support.nats_cluster import NatsCluster, nats_binary, nats_cluster
from tests.support.scripted_device import ScriptedDevice, start_fleet

pytestmark = pytest.mark.slow
OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)
SKUS = {"pi4": 6, "jetson": 6, "esp": 6}
STAGES = ["10%", "40%", "70%", "100%"]
# QoS 0 policy (docs/operations.md): a node loss may cost the telemetry its devices and managers send
# until they are connected again; this test's bound on that share of all points sent
MAX_LOST_SHARE = 0.25


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    if nats_binary() is None:
        if os.environ.get("EDGEFLEET_CI") == "1":
            pytest.fail("nats-server is not installed (.ci/run installs it)")
        pytest.skip("nats-server is not installed (.ci/run installs it)")
    with nats_cluster(tmp_path / "nats") as c:
        yield c


@pytest.fixture
def fleet(tmp_path: Path, cluster: NatsCluster, key_files: tuple[Path, Path]) -> Iterator[tuple[Managers, str]]:
    with pg_database() as db, managers(tmp_path, db, cluster.broker, key_files[1]) as group:
        yield group, db


def _spread(cluster: NatsCluster, devices: list[ScriptedDevice]) -> Counter[int]:
    ports = Counter(d.client.broker.port for d in devices)
    assert set(ports) == {n.mqtt_port for n in cluster.nodes}, f"devices not on every node: {ports}"
    return ports


def _start_rollout(group: Managers, tmp: Path, key: PrivateKey, devices: int) -> int:
    api = group.api()
    wait_until(lambda: sum(1 for d in api.get("/devices") if d["sku"]) == devices, 60, "devices registered")
    (tmp / "d.efb").write_bytes(simple_bundle(key, version="2.0.0", sequence=2))
    api.add_release(tmp / "d.efb")
    gates = {"max_concurrent": 3}
    return int(api.post("/rollouts", {"release": "digits@2.0.0", "stages": STAGES, "gates": gates})["id"])


def _status(group: Managers, rid: int) -> dict[str, Any]:
    try:
        return group.api().get(f"/rollouts/{rid}")  # type: ignore[no-any-return]
    except Exception:  # a manager just killed: the next call picks a living one
        return {}


def _under_way(group: Managers, rid: int, stage: int, min_done: int) -> None:
    def ok() -> bool:
        st = _status(group, rid)
        if not st or st["stage"] < stage:
            return False
        return sum(st["progress"].values()) - st["progress"]["targeted"] >= min_done

    wait_until(ok, 90, f"stage {stage + 1} under way")


def _finished(group: Managers, rid: int) -> dict[str, Any]:
    ended = ("SUCCEEDED", "ABORTED")
    return wait_until(  # type: ignore[no-any-return]
        lambda: (st := _status(group, rid)) and st["state"] in ended and st, 180, "the rollout to end"
    )


def _assert_once_per_device_every_stage(group: Managers, rid: int, devices: list[ScriptedDevice]) -> None:
    api = group.api()
    deployments = api.get(f"/rollouts/{rid}/deployments")
    assert len(deployments) == len(devices) and {d["state"] for d in deployments} == {"SUCCEEDED"}
    assert Counter(d["device_id"] for d in deployments).most_common(1)[0][1] == 1  # 0 duplicate deployments
    for dev in devices:
        # Every command acted on once (no duplicate); a second attempt only after the first failed: its artifact
        # URL named the killed leader, so the download was refused and the new leader sent attempt 2.
        retried = len(dev.acted_on) == 2 and dev.acted_on[1] == f"{dev.acted_on[0]}-a2" and bool(dev.errors)
        assert len(dev.acted_on) == 1 or retried, (dev.device_id, dev.acted_on, dev.errors)
        assert dev.model.version == "2.0.0", dev.device_id
    audit = [
        a["detail"].split(": ", 1)[1]
        for a in reversed(api.get(f"/rollouts/{rid}/audit"))
        if a["action"] == "rollout.transition"
    ]
    stages = [f"stage {i} {w}" for i in (1, 2, 3) for w in ("deployed", "baked")]
    assert audit == [*stages, "stage 4 deployed", "last stage baked"]  # no stage skipped, none twice


def test_leader_killed_mid_rollout_another_takes_over(
    cluster: NatsCluster, fleet: tuple[Managers, str], tmp_path: Path, release_key: PrivateKey
) -> None:
    group, _ = fleet
    devices = start_fleet(cluster.broker, "default", SKUS, OLD, step_delay=0.1)
    try:
        _spread(cluster, devices)
        rid = _start_rollout(group, tmp_path, release_key, len(devices))
        _under_way(group, rid, 1, 4)
        leader = wait_until(group.leader, 30, "a rollout leader")
        leader.kill9()
        takeover = timed(lambda: (m := group.leader()) is not None and m is not leader, 60, "another leader")
        print(f"leader {leader.instance} killed; {group.leader().instance} took the lease in {takeover:.2f}s")  # type: ignore[union-attr]
        assert takeover <= 2 * LEASE_TTL  # the lease time set (5 s) plus a tick; 10 s is the bound
        final = _finished(group, rid)
        assert final["state"] == "SUCCEEDED", final["reason"]
        _assert_once_per_device_every_stage(group, rid, devices)
    finally:
        for d in devices:
            d.stop()


def test_broker_node_killed_mid_rollout_devices_fail_over(
    cluster: NatsCluster, fleet: tuple[Managers, str], tmp_path: Path, release_key: PrivateKey
) -> None:
    group, db = fleet
    devices = start_fleet(cluster.broker, "default", SKUS, OLD, step_delay=0.1, telemetry_interval=0.2)
    try:
        ports = _spread(cluster, devices)
        rid = _start_rollout(group, tmp_path, release_key, len(devices))
        _under_way(group, rid, 1, 4)
        victim = cluster.node_of(ports.most_common(1)[0][0])
        moved = [d for d in devices if d.client.broker.port == victim.mqtt_port]
        killed_at = time.monotonic()
        victim.kill9()
        reconnect = timed(lambda: all(d.reconnects and d.client.is_connected for d in moved), 60, "devices back")
        assert all(d.client.broker.port != victim.mqtt_port for d in moved)
        print(f"node {victim.name} killed: {len(moved)} devices reconnected to others within {reconnect:.2f}s")
        final = _finished(group, rid)
        assert final["state"] == "SUCCEEDED", final["reason"]
        _assert_once_per_device_every_stage(group, rid, devices)
        assert max(d.reconnects[0] for d in moved) > killed_at
    finally:
        for d in devices:
            d.stop()
    group.stop()  # warm: every manager flushes its rollups
    stored, sent = stored_points(db), {d.device_id: d.telemetry_sent for d in devices}
    assert all(stored.get(dev, 0) <= n for dev, n in sent.items()), "a point stored twice"
    lost = sum(sent.values()) - sum(stored.get(dev, 0) for dev in sent)
    unsent = sum(d.telemetry_unsent for d in devices)
    print(f"telemetry: {sum(sent.values())} sent, {lost} lost in the broker or managers, {unsent} unsent offline")
    assert lost <= MAX_LOST_SHARE * sum(sent.values())


RATE, SECONDS, DEVICES = 2_000, 10, 200  # points per second, how long, how many device ids


def test_telemetry_at_2000_per_second_is_stored_once(cluster: NatsCluster, fleet: tuple[Managers, str]) -> None:
    group, db = fleet
    publishers = [
        MqttClient(MqttConfig(url=url, client_id=f"load-{i}", protocol="3.1.1", clean_start=True))
        for i, url in enumerate(cluster.urls)
    ]
    for client in publishers:
        client.connect()
    sent: Counter[str] = Counter()
    start = time.monotonic()
    for tick in range(SECONDS * 100):  # every 10 ms, RATE / 100 points spread over devices and nodes
        batch = [f"dev-{(tick * RATE // 100 + i) % DEVICES}" for i in range(RATE // 100)]
        for i, dev in enumerate(batch):
            sent[dev] += 1
            point = P.encode(P.Telemetry({"ts": int(time.time() * 1000), "seq": sent[dev], "inferences": 1}))
            publishers[i % len(publishers)].publish(P.topic("default", dev, P.TELEMETRY), point)
        time.sleep(max(0.0, start + (tick + 1) / 100 - time.monotonic()))
    rate = sum(sent.values()) / (time.monotonic() - start)
    for client in publishers:
        client.disconnect()
    wait_until(lambda: _received_all(group, sum(sent.values())), 60, "every manager to receive every point")
    group.stop()  # warm: every manager flushes its rollups
    stored = stored_points(db)
    print(f"{sum(sent.values())} points at {rate:.0f}/s; stored {sum(stored.values())} across 3 managers")
    assert stored == dict(sent)  # every point once: not 0, not 3 times


def _received_all(group: Managers, total: int) -> bool:
    healths = [m.health() for m in group.members]
    return all(h is not None and h["received"].get("telemetry", 0) >= total for h in healths)
