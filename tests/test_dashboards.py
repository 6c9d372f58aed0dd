"""dashboards/ work against the real thing: a real Prometheus scrapes a running fleet manager, the Telegraf
config's topic parsing and JSON settings turn a real agent's telemetry into tagged numeric fields, and every
metric the Grafana dashboard queries is one the fleet manager exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from device_agent.mqtt import MqttClient, MqttConfig
from fleet.broker import LocalBroker, free_port, wait_for_port
from tests.support.agent_harness import AgentThread, flash_device, package_tiny
from tests.support.fleet_harness import TOKEN, Harness, running_fleet, wait_until
from tests.support.telegraf import consume

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
METRIC = re.compile(r"\bedgefleet_[a-z0-9_]+")


def prometheus_binary() -> str:
    """The Debian ``prometheus`` binary. Missing: a failure under CI (.ci/run installs it), else a skip."""
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if found:
        return found
    message = "prometheus binary not found: apt-get install prometheus (.ci/run installs it)"
    if os.environ.get("CI") or os.environ.get("EDGEFLEET_CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def fleet_with_agent(
    tmp_path: Path,
    broker: LocalBroker,
    tiny_models: dict[str, Path],
    release_key: PrivateKey,
    key_files: tuple[Path, Path],
) -> Iterator[tuple[Harness, AgentThread]]:
    """A fleet manager (fleet "test") and one real agent (dev-1, sku pi4) registered with it."""
    bundle = package_tiny(tiny_models, release_key, "1.0.0", 1)
    with running_fleet(broker.url, tmp_path / "fm", key_files[1], fleet="test") as h:
        agent = AgentThread(flash_device(tmp_path, bundle, broker.url, key_files[1], sku="pi4"))
        try:
            wait_until(
                lambda: any(d["status"] == "online" and d["model_version"] for d in h.api.get("/devices")),
                30,
                "dev-1 registered",
            )
            yield h, agent
        finally:
            agent.stop()


def exported_metrics(url: str) -> set[str]:
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_a_real_prometheus_scrapes_the_fleet_manager(
    tmp_path: Path, fleet_with_agent: tuple[Harness, AgentThread]
) -> None:
    binary = prometheus_binary()
    h, _ = fleet_with_agent
    port, target = free_port(), h.url.removeprefix("http://")
    config, secret = tmp_path / "prometheus.yml", tmp_path / "prometheus.token"
    secret.write_text(h.api.post("/tokens", {"name": "prometheus", "role": "viewer"})["secret"])  # least role
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: edgefleet\n    authorization:\n      credentials_file: {secret}\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    flags = [f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
    proc = subprocess.Popen([binary, *flags, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    api = f"http://127.0.0.1:{port}/api/v1"

    def online() -> list[dict[str, Any]]:
        r = httpx.get(f"{api}/query", params={"query": 'edgefleet_devices{status="online"}'}, timeout=5)
        return r.json()["data"]["result"] if r.status_code == 200 else []  # type: ignore[no-any-return]

    try:
        wait_for_port("127.0.0.1", port, 30)
        result = wait_until(online, 60, "Prometheus to have scraped edgefleet_devices")
        assert len(result) == 1
        assert result[0]["metric"] | {"__name__": "x"} == {
            "__name__": "x",
            "job": "edgefleet",
            "instance": target,
            "status": "online",
            "sku": "pi4",
            "model": "digits",
            "version": "1.0.0",
        }
        assert result[0]["value"][1] == "1"
        targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
        counters = {"query": "edgefleet_ingest_messages_total"}
        rate = wait_until(
            lambda: httpx.get(f"{api}/query", params=counters, timeout=5).json()["data"]["result"],
            30,
            "ingest counters",
        )
        assert {r["metric"]["kind"] for r in rate} >= {"status", "info", "telemetry"}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_grafana_dashboard_queries_only_metrics_the_fleet_manager_exports(
    fleet_with_agent: tuple[Harness, AgentThread],
) -> None:
    h, _ = fleet_with_agent
    board = json.loads((DASHBOARDS / "grafana-fleet.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    used = {m.removesuffix("_total") for e in exprs for m in METRIC.findall(e)}
    exported = {m.removesuffix("_total") for m in exported_metrics(h.url)}
    assert used, "the dashboard queries no edgefleet metric"
    assert used <= exported, f"queried but not exported: {sorted(used - exported)}"
    assert exported <= used, f"exported but on no panel: {sorted(exported - used)}"
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    assert {"datasource", "sku"} <= {v["name"] for v in board["templating"]["list"]}


def test_telegraf_config_turns_real_agent_telemetry_into_tagged_numeric_fields(
    broker: LocalBroker, fleet_with_agent: tuple[Harness, AgentThread]
) -> None:
    conf = tomllib.loads((DASHBOARDS / "telegraf-edgefleet.conf").read_text())
    [plugin] = conf["inputs"]["mqtt_consumer"]
    assert conf["outputs"], "telegraf refuses to start without an output"
    client = MqttClient(MqttConfig(url=broker.url, client_id=f"telegraf-{uuid.uuid4().hex[:8]}", clean_start=True))
    client.connect()
    client.subscribe([(f, int(plugin["qos"])) for f in plugin["topics"]])
    metrics = []
    try:
        deadline = time.monotonic() + 30
        while len(metrics) < 3 and time.monotonic() < deadline:
            try:
                msg = client.messages.get(timeout=1)
            except Exception:  # queue.Empty: keep waiting
                continue
            metric = consume(plugin, msg.topic, msg.payload)
            assert metric is not None, msg.topic
            metrics.append((msg, metric))
    finally:
        client.disconnect()
    assert len(metrics) == 3, "no telemetry from the agent"
    for msg, metric in metrics:
        raw = json.loads(msg.payload)
        assert msg.topic == P.topic("test", "dev-1", P.TELEMETRY)
        assert metric.name == "telemetry"
        assert metric.tags == {"fleet": "test", "device": "dev-1"}
        assert metric.time_s == raw["ts"] / 1000.0 and abs(metric.time_s - time.time()) < 60
        assert set(metric.fields) == set(raw) - {"ts"}
        assert set(metric.fields) >= {"ips", "inferences", "lat_p95_ms", "errors", "conf_mean", "cpu_pct", "rss_mb"}
        assert all(isinstance(v, float) for v in metric.fields.values())
    assert metrics[-1][1].fields["inferences"] > 0
    assert consume(plugin, P.topic("test", "dev-1", P.STATUS), b"online") is None  # not subscribed


def test_node_red_flow_subscribes_to_the_protocol_topics() -> None:
    nodes = json.loads((DASHBOARDS / "node-red-flow.json").read_text())
    brokers = {n["id"] for n in nodes if n["type"] == "mqtt-broker"}
    ins = {n["name"]: n for n in nodes if n["type"] == "mqtt in"}
    expected = {"telemetry": P.TELEMETRY, "status (retained)": P.STATUS, "deployment events": P.EVENTS}
    assert set(ins) == set(expected)
    for name, kind in expected.items():
        node = ins[name]
        assert node["broker"] in brokers
        assert node["topic"] == f"{P.PREFIX}/+/+/{kind}"
        assert _matches(node["topic"], P.topic("any-fleet", "cam-7", kind))
    ids = {n["id"] for n in nodes}
    assert all(w in ids for n in nodes for out in n.get("wires", []) for w in out)


def _matches(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    return len(p) == len(t) and all(a in ("+", b) for a, b in zip(p, t, strict=True))
