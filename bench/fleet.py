"""Fleet manager benchmarks: telemetry ingest vs ``mosquitto_sub`` on the same stream (ratio), and the
pure rollout ``tick()`` decision time for 10,000 devices.

Ingest: N telemetry points are queued by a real Mosquitto for an offline persistent session (QoS 0,
``queue_qos0_messages``), then the consumer connects and drains them as fast as it can: once
``mosquitto_sub`` (printing to /dev/null), once our ingest (paho → parse → latest state → rollups).
Runs alternate and medians are compared, so machine noise hits both alike.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from device_agent import protocol as P
from device_agent.mqtt import MqttClient, MqttConfig
from device_agent.protocol import DeploymentState as D
from fleet.broker import LocalBroker, start_mosquitto
from fleet.ingest import Ingest, IngestConfig, subscriptions
from fleet.rollout import engine
from fleet.rollout.model import DeploymentView, DeviceView, Health, Phase, RolloutState, RolloutView, deployment_id
from fleet.service import parse_stages
from fleet.store import Store

N = 50_000  # telemetry points per run
DEVICES = 1_000
ROUNDS = 3
FLEET = "bench"
BROKER_CONFIG = "queue_qos0_messages true\nmax_queued_messages 1000000\nmax_queued_bytes 0\n"


def _publish(broker: LocalBroker, n: int) -> None:
    pub = MqttClient(MqttConfig(url=broker.url, client_id="bench-pub"), max_queued=10)
    pub.connect()
    for i in range(n):
        values = {"ts": 1_700_000_000_000 + i, "seq": i, "inferences": 50, "errors": 0, "ips": 9.5,
                  "lat_p50_ms": 3.1, "lat_p95_ms": 4.2, "lat_p99_ms": 6.0, "cpu_pct": 31.0, "rss_mb": 48.0,
                  "conf_mean": 0.91, "psi_max": 0.02}  # fmt: skip
        pub.publish(P.topic(FLEET, f"dev-{i % DEVICES}", P.TELEMETRY), P.encode(P.Telemetry(values)), qos=0)
    pub.publish(P.topic(FLEET, "dev-0", P.STATUS), b"online", qos=1)  # PUBACK: the broker has them all
    pub.disconnect()


def _mosquitto_sub(broker: LocalBroker, n: int) -> float:
    base = ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-i", "bench-sub", "-c", "-q", "0",
            "-V", "mqttv311", "-t", P.subscription(FLEET, P.TELEMETRY)]  # fmt: skip
    subprocess.run([*base, "-W", "1"], capture_output=True)  # create the persistent session, then leave
    _publish(broker, n)
    t0 = time.perf_counter()
    subprocess.run([*base, "-C", str(n)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def _ingest(broker: LocalBroker, n: int, tmp: Path) -> float:
    cfg = MqttConfig(url=broker.url, client_id="bench-fm", protocol="3.1.1")
    client = MqttClient(cfg, max_queued=n + 10)
    client.connect()
    client.subscribe(subscriptions(FLEET, client.protocol_version)[3:])
    client.disconnect()
    _publish(broker, n)
    store = Store.sqlite(tmp / f"bench-{time.monotonic_ns()}.db")
    ingest = Ingest(store, IngestConfig(fleet=FLEET))
    client = MqttClient(cfg, max_queued=n + 10)
    t0 = time.perf_counter()
    client.connect()
    while ingest.received["telemetry"] < n:
        ingest.handle(client.messages.get(timeout=30))
    ingest.flush()
    elapsed = time.perf_counter() - t0
    client.disconnect()
    store.close()
    return elapsed


def _tick_view(n: int) -> RolloutView:
    skus = ("pi4", "jetson", "esp")
    health = Health(1.0, 0.0, 5.0, 0.02, 0.9)
    devices = tuple(DeviceView(f"d-{i}", skus[i % 3], model_name="digits", model_sequence=1, health=health)
                    for i in range(n))  # fmt: skip
    states = (D.SUCCEEDED, D.SUCCEEDED, D.SUCCEEDED, D.DOWNLOADING, D.INSTALLING)
    deps = {d.id: DeploymentView(d.id, deployment_id(1, d.id, 1), states[i % 5], 1, sent_at=0.5, finished_at=0.5)
            for i, d in enumerate(devices[: n // 2])}  # fmt: skip
    from fleet.rollout.model import RolloutSpec, Stage

    spec = RolloutSpec("digits@2.0.0", 2, tuple(Stage(s) for s in parse_stages(["5", "25", "50", "100"])))
    return RolloutView(1, spec, RolloutState.RUNNING, 2, Phase.DEPLOYING, 0.0, devices, deps)


def run() -> str:
    if shutil.which("mosquitto_sub") is None:
        return "## Fleet manager\n\nskipped: mosquitto_sub is not installed\n"
    sub_t, ing_t = [], []
    with tempfile.TemporaryDirectory() as tmp, start_mosquitto(extra_config=BROKER_CONFIG) as broker:
        for _ in range(ROUNDS):
            sub_t.append(_mosquitto_sub(broker, N))
            ing_t.append(_ingest(broker, N, Path(tmp)))
    s, i = statistics.median(sub_t), statistics.median(ing_t)
    view = _tick_view(10_000)
    baking = replace(view, phase=Phase.BAKING, deployments={k: replace(v, state=D.SUCCEEDED)
                                                             for k, v in view.deployments.items()})  # fmt: skip
    tick_t = _median_time(lambda: engine.tick(view, 1.0))
    bake_t = _median_time(lambda: engine.tick(baking, 1.0))
    return "\n".join([
        "## Fleet manager: ingest and rollout decisions (issue 5)\n",
        f"Ingest: {N:,} telemetry points (12 keys, {DEVICES:,} devices) queued by Mosquitto for an offline session, "
        f"then drained; median of {ROUNDS} alternating runs.\n",
        "| consumer | median time | msgs/s | ratio vs mosquitto_sub |",
        "|---|---|---|---|",
        f"| fleet ingest (paho → parse + validate → latest state → per-minute rollups in SQLite) | {i:.2f} s | {N / i:,.0f} | **{s / i:.2f}** |",
        f"| `mosquitto_sub` → /dev/null (C client, no parsing) | {s:.2f} s | {N / s:,.0f} | 1.00 |",
        "",
        "Rollout decision core, 10,000 devices in 3 skus, half of them with a deployment:\n",
        "| `tick()` | median time |",
        "|---|---|",
        f"| deploying stage 3 of 4 (picks the next devices) | {tick_t * 1000:.1f} ms |",
        f"| baking (health comparison over both cohorts) | {bake_t * 1000:.1f} ms |",
        "",
        "Target (issue 5): ingest ≥ 10,000 msgs/s. The full 10,000-device rollout bench needs the simulator (later).",
    ])  # fmt: skip


def _median_time(fn: object, rounds: int = 7) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
