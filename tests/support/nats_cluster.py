"""A real 3-node NATS cluster speaking MQTT 3.1.1 with JetStream, on free loopback ports, for tests.

Each node gets its own config file and JetStream storage directory under the test's directory; the
nodes know each other through cluster routes. MQTT in a NATS cluster keeps sessions, retained messages
and QoS 1 messages in replicated JetStream streams, so a client that loses its node resumes its session
on another. ``stop()`` (or leaving the context) stops every node it started, killed ones included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from device_agent.errors import TransportError
from device_agent.mqtt import MqttClient, MqttConfig
from fleet.broker import free_port
from tests.support.processes import kill9, terminate

CLUSTER = "edgefleet"
READY_TIMEOUT = 90.0  # seconds for a cluster to elect its JetStream leader on a loaded machine (a hang guard)


def nats_binary() -> str | None:
    return shutil.which("nats-server") or next((p for p in ("/usr/sbin/nats-server",) if os.path.exists(p)), None)


@dataclass
class NatsNode:
    name: str
    client_port: int
    route_port: int
    mqtt_port: int
    http_port: int
    config: Path
    store: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def config_text(self, routes: list[str]) -> str:
        """The node's nats-server config (the exact settings docs/operations.md quotes)."""
        return "\n".join(
            [
                f"server_name: {self.name}",
                f"listen: 127.0.0.1:{self.client_port}",
                f"http: 127.0.0.1:{self.http_port}",
                f'jetstream {{ store_dir: "{self.store}", max_memory_store: 64MB, max_file_store: 512MB }}',
                f"cluster {{ name: {CLUSTER}, listen: 127.0.0.1:{self.route_port}, routes: [{', '.join(routes)}] }}",
                # 3 replicas of the MQTT streams: sessions, retained and QoS 1 messages survive a node
                f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: 3, ack_wait: 5s }}",
                "",
            ]
        )

    def start(self) -> None:
        binary = nats_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed (.ci/run installs it)")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([binary, "-c", str(self.config)], stdout=out, stderr=out)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        kill9(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 15)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class NatsCluster:
    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [n.mqtt_url for n in self.nodes]

    @property
    def broker(self) -> str:
        """All nodes, comma-separated: the ``--broker`` value for devices and managers."""
        return ",".join(self.urls)

    def node_of(self, port: int) -> NatsNode:
        return next(n for n in self.nodes if n.mqtt_port == port)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Every node healthy and a QoS 1 message published on each reaching a subscriber on another."""
        deadline = time.monotonic() + timeout
        while not all(n.healthy() for n in self.nodes):
            if time.monotonic() > deadline or not all(n.alive for n in self.nodes):
                raise RuntimeError(f"NATS cluster not healthy (logs: {[str(n.log) for n in self.nodes]})")
            time.sleep(0.2)
        for i, node in enumerate(self.nodes):
            while not _round_trip(node.mqtt_url, self.nodes[(i + 1) % len(self.nodes)].mqtt_url):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no MQTT round trip through {node.name} (log: {node.log})")
                time.sleep(0.5)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _round_trip(pub_url: str, sub_url: str) -> bool:
    """A QoS 1 message published on one node arrives at a subscriber on another."""
    tag = uuid.uuid4().hex[:8]
    topic = f"edgefleet/v1/probe/{tag}/status"
    sub = MqttClient(MqttConfig(url=sub_url, client_id=f"probe-s-{tag}", protocol="3.1.1", clean_start=True))
    pub = MqttClient(MqttConfig(url=pub_url, client_id=f"probe-p-{tag}", protocol="3.1.1", clean_start=True))
    try:
        sub.connect()
        sub.subscribe([(topic, 1)])
        pub.connect()
        pub.publish(topic, b"online", qos=1)
        return sub.messages.get(timeout=5).payload == b"online"
    except (TransportError, OSError, Exception):  # not ready yet: JetStream still electing (any paho/queue error)
        return False
    finally:
        for client in (sub, pub):
            with contextlib.suppress(Exception):
                client.disconnect()


@contextmanager
def nats_cluster(workdir: Path, size: int = 3) -> Iterator[NatsCluster]:
    """Start ``size`` clustered nodes under ``workdir``, wait until they carry MQTT, stop them afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = NatsCluster()
    for i in range(1, size + 1):
        store = workdir / f"n{i}" / "jetstream"
        store.mkdir(parents=True)
        ports = [free_port() for _ in range(4)]
        cluster.nodes.append(
            NatsNode(f"n{i}", *ports, config=workdir / f"n{i}" / "nats.conf", store=store, log=workdir / f"n{i}.log")
        )
    routes = [f"nats-route://127.0.0.1:{n.route_port}" for n in cluster.nodes]
    for node in cluster.nodes:
        node.config.write_text(node.config_text(routes))
    try:
        for node in cluster.nodes:
            node.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()
