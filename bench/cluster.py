"""Cluster failover times (issue 18), on the setup of tests/test_cluster.py: a 3-node NATS cluster (MQTT
3.1.1 + JetStream), 3 ``fleetctl serve`` processes on one PostgreSQL database (``--lease-ttl 5``), and 18
scripted devices spread over the nodes by the hash of their ids.

- leader takeover: from ``kill -9`` of the rollout leader to another manager named leader by
  ``GET /api/v1/health`` (bounded by the lease time plus one runner tick);
- device reconnect: from ``kill -9`` of the broker node carrying the most devices to the moment every
  one of them is connected to another node.

Each round starts everything afresh; medians and maxima over the rounds.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from tests.support.cluster_harness import LEASE_TTL, managers, pg_database, timed
from tests.support.fleet_harness import wait_until
from tests.support.nats_cluster import nats_binary, nats_cluster
from tests.support.scripted_device import start_fleet

ROUNDS = 3
OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)
SKUS = {"pi4": 6, "jetson": 6, "esp": 6}
NOTE = (
    "Reconnect varies with where JetStream's stream leaders were: a device counts as back once its retained "
    "`online` (QoS 1) is acknowledged, and the surviving nodes hold QoS 1 acknowledgements for several seconds "
    "after the loss (seen as 10 s publish timeouts in a probe; presumably while JetStream moves leadership of the "
    "MQTT streams off the killed node); at other times devices are back in well under a second."
)


def _round(tmp: Path) -> tuple[float, float, int]:
    """(leader takeover s, device reconnect s, devices moved) for one fresh cluster."""
    _, pub = PrivateKey.generate().save(tmp / "keys" / "release")
    with nats_cluster(tmp / "nats") as cluster, pg_database() as db, managers(tmp, db, cluster.broker, pub) as group:
        devices = start_fleet(cluster.broker, "default", SKUS, OLD)
        try:
            leader = wait_until(group.leader, 30, "a rollout leader")
            leader.kill9()
            takeover = timed(lambda: (m := group.leader()) is not None and m is not leader, 60, "another leader")
            ports = [d.client.broker.port for d in devices]
            victim = cluster.node_of(max(set(ports), key=ports.count))
            moved = [d for d in devices if d.client.broker.port == victim.mqtt_port]
            victim.kill9()
            reconnect = timed(lambda: all(d.reconnects and d.client.is_connected for d in moved), 60, "reconnects")
            return takeover, reconnect, len(moved)
        finally:
            for d in devices:
                d.stop()


def run() -> str:
    if nats_binary() is None:
        return "## Cluster failover\n\nskipped: nats-server is not installed\n"
    results = []
    for i in range(ROUNDS):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(_round(Path(tmp)))
        time.sleep(1)
        print(f"cluster round {i + 1}: takeover {results[-1][0]:.2f} s, reconnect {results[-1][1]:.2f} s")
    takeovers, reconnects = [r[0] for r in results], [r[1] for r in results]
    return "\n".join(
        [
            "## Cluster failover (issue 18)\n",
            "3-node NATS cluster (MQTT 3.1.1 + JetStream, `stream_replicas: 3`), 3 `fleetctl serve` on one "
            f"PostgreSQL database with `--lease-ttl {LEASE_TTL:g}`, 18 scripted devices spread over the nodes; "
            f"{ROUNDS} rounds, each on a fresh cluster.\n",
            "| event | median | max | rounds |",
            "|---|---|---|---|",
            f"| leader takeover after `kill -9` of the leader | {statistics.median(takeovers):.2f} s "
            f"| {max(takeovers):.2f} s | {', '.join(f'{t:.2f}' for t in takeovers)} |",
            f"| device reconnect after `kill -9` of a broker node ({results[0][2]} devices on it in round 1) "
            f"| {statistics.median(reconnects):.2f} s | {max(reconnects):.2f} s "
            f"| {', '.join(f'{t:.2f}' for t in reconnects)} |",
            "",
            NOTE,
        ]
    )
