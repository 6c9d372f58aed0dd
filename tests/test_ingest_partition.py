"""The rules several managers compute alike without talking: the ingest partition (fleet/cluster.py), the
first broker node of a client and the broker list (device_agent/mqtt/client.py); and failover to the
next node with a real broker behind a dead URL."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from device_agent.errors import ConfigError
from device_agent.mqtt import MqttClient, MqttConfig, parse_brokers
from device_agent.mqtt.client import MAX_BROKERS, first_broker
from fleet.broker import LocalBroker, free_port
from fleet.cluster import Membership, Partition, member_lease, owner
from fleet.store import Store
from tests.support.fleet_harness import wait_until

MEMBERS = ("members/default/m1", "members/default/m2", "members/default/m3")
DEVICES = [f"dev-{i}" for i in range(3000)]


def test_every_device_has_exactly_one_owner_and_the_shares_are_even() -> None:
    parts = [Partition(me, MEMBERS) for me in MEMBERS]
    owners = Counter(sum(1 for p in parts if p.owns(d)) for d in DEVICES)
    assert owners == {1: len(DEVICES)}
    shares = Counter(owner(d, MEMBERS) for d in DEVICES)
    assert all(800 < n < 1200 for n in shares.values()), shares  # 1,000 each expected


def test_a_member_leaving_moves_only_its_own_devices() -> None:
    before = {d: owner(d, MEMBERS) for d in DEVICES}
    after = {d: owner(d, MEMBERS[:2]) for d in DEVICES}
    moved = [d for d in DEVICES if before[d] != after[d]]
    assert moved and all(before[d] == MEMBERS[2] for d in moved)


def test_the_partition_ignores_order_and_always_includes_itself() -> None:
    p = Partition(MEMBERS[0], (MEMBERS[2], MEMBERS[1]))
    assert p.members == MEMBERS
    assert not p.update((MEMBERS[1], MEMBERS[2], MEMBERS[0]))
    assert Partition("alone").owns("any-device")


def test_membership_reads_the_live_member_leases(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/fleet.db")
    clock = [1000.0]
    a = Membership(store.leases, "default", "m1", ttl=10, clock=lambda: clock[0])
    b = Membership(store.leases, "default", "m2", ttl=10, clock=lambda: clock[0])
    assert a.heartbeat() == (member_lease("default", "m1"),)
    assert b.heartbeat() == a.heartbeat() == (member_lease("default", "m1"), member_lease("default", "m2"))
    clock[0] += 11  # m2 went silent: its lease expired
    assert a.heartbeat() == (member_lease("default", "m1"),)
    store.close()


def test_broker_lists_parse_with_limits() -> None:
    assert [b.port for b in parse_brokers("mqtt://a:1884, mqtt://b:1885")] == [1884, 1885]
    too_many = ",".join(["mqtt://a:1"] * (MAX_BROKERS + 1))
    for bad in ("", "mqtt://a:1,", "mqtt://a:1,,mqtt://b:2", "http://a:1", too_many):
        with pytest.raises(ConfigError):
            parse_brokers(bad)


def test_clients_spread_over_the_nodes_by_their_id() -> None:
    spread = Counter(first_broker(f"dev-{i}", 3) for i in range(3000))
    assert set(spread) == {0, 1, 2} and min(spread.values()) > 800
    assert first_broker("dev-7", 3) == first_broker("dev-7", 3)
    assert first_broker("dev-7", 1) == 0


def test_connect_fails_over_to_the_next_node(broker: LocalBroker) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    ids = [f"fo-{i}" for i in range(20)]
    client_id = next(i for i in ids if first_broker(i, 2) == 0)  # starts on the dead node
    client = MqttClient(MqttConfig(url=f"{dead},{broker.url}", client_id=client_id, clean_start=True))
    client.connect()
    try:
        assert client.is_connected and str(client.broker) == broker.url and client.failovers == 1
        client.publish("edgefleet/v1/t/fo/status", b"online", qos=1)
    finally:
        client.disconnect()


def test_every_node_down_is_one_error_naming_each(broker: LocalBroker) -> None:
    urls = [f"mqtt://127.0.0.1:{free_port()}" for _ in range(2)]
    client = MqttClient(MqttConfig(url=",".join(urls), client_id="nobody", protocol="3.1.1"))
    with pytest.raises(Exception, match="cannot reach broker") as err:
        client.connect()
    assert all(u.rsplit(":", 1)[1] in str(err.value) for u in urls)


def test_agent_toml_and_flash_take_broker_lists(tmp_path: Path) -> None:
    from device_agent.config import AgentConfig, BrokerSection, DeviceSection
    from device_agent.provision import FlashOptions, flash
    from device_agent.session import mqtt_config

    config = AgentConfig(
        DeviceSection(id="dev-1"), broker=BrokerSection(url="mqtt://10.0.0.1:1883,mqtt://10.0.0.2:1884")
    )
    assert [b.port for b in MqttClient(mqtt_config(config)).brokers] == [1883, 1884]
    with pytest.raises(ConfigError, match="empty URL"):
        flash(tmp_path / "x.efb", tmp_path / "home", FlashOptions(device_id="d", broker="mqtt://a:1,", trust=[]))


def test_a_multiplexed_client_moves_to_the_next_node_after_a_failed_attempt(broker: LocalBroker) -> None:
    """What ``fleetctl simulate``'s lean devices do: an attempt that gets no CONNACK moves the client to
    the next node of its list for the next attempt (which the device's backoff paces)."""
    from device_agent.mqtt.mux import MqttMux, MuxClient

    dead = f"mqtt://127.0.0.1:{free_port()}"
    client_id = next(c for c in (f"mux-{i}" for i in range(20)) if first_broker(c, 2) == 0)
    mux, lost, up = MqttMux(), [], []
    mux.start()
    config = MqttConfig(url=f"{dead},{broker.url}", client_id=client_id, clean_start=True, session_expiry_s=0)
    client = MuxClient(mux, config, on_connect=lambda: up.append(1), on_disconnect=lost.append)
    try:
        client.connect()
        wait_until(lambda: lost, 30, "the dead node to fail")
        client.connect()  # the device's next attempt
        wait_until(lambda: up, 30, "the next node to answer")
        assert str(client.broker) == broker.url and client.failovers == 1
    finally:
        client.disconnect()
        mux.stop()
