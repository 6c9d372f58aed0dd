"""``/metrics`` in Prometheus text format: devices by status, sku and model version; rollout progress;
ingest counts and rate; dropped messages by reason. Computed at scrape time from the store and ingest.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fleet.rollout.model import RolloutState
from fleet.service import FleetService


class FleetCollector(Collector):
    def __init__(self, service: FleetService) -> None:
        self.service = service
        self._last: tuple[float, int] = (time.monotonic(), 0)

    def collect(self) -> Iterator[Any]:
        yield from self._devices()
        yield from self._rollouts()
        yield from self._ingest()

    def _devices(self) -> Iterator[Any]:
        g = GaugeMetricFamily(
            "edgefleet_devices",
            "Devices by status, sku and model version",
            labels=["status", "sku", "model", "version"],
        )
        counts = Counter(
            (r.status, r.sku or "", r.model_name or "", r.model_version or "")
            for r in self.service.store.devices.all(self.service.fleet)
        )
        for labels, n in sorted(counts.items()):
            g.add_metric(list(labels), n)
        yield g

    def _rollouts(self) -> Iterator[Any]:
        state = GaugeMetricFamily(
            "edgefleet_rollout_state", "1 for the rollout's current state", labels=["rollout", "release", "state"]
        )
        stage = GaugeMetricFamily("edgefleet_rollout_stage", "Current stage (1-based)", labels=["rollout", "release"])
        deps = GaugeMetricFamily(
            "edgefleet_rollout_deployments", "Deployments by state", labels=["rollout", "release", "state"]
        )
        store = self.service.store
        for row in store.rollouts.find(states=[s for s in RolloutState if s.active]):
            rid, rel = str(row.id), row.release
            state.add_metric([rid, rel, row.state], 1)
            stage.add_metric([rid, rel], row.stage + 1)
            for st, n in sorted(Counter(d.state for d in store.deployments.for_rollout(row.id)).items()):
                deps.add_metric([rid, rel, st], n)
        yield from (state, stage, deps)

    def _ingest(self) -> Iterator[Any]:
        ingest = self.service.ingest
        received = CounterMetricFamily("edgefleet_ingest_messages", "Device messages ingested", labels=["kind"])
        for kind, n in sorted(ingest.received.items()):
            received.add_metric([kind], n)
        dropped = CounterMetricFamily("edgefleet_ingest_dropped", "Messages dropped, by reason", labels=["reason"])
        for reason, n in sorted(ingest.dropped.items()):
            dropped.add_metric([reason], n)
        total = sum(ingest.received.values())
        now = time.monotonic()
        then, before = self._last
        self._last = (now, total)
        rate = GaugeMetricFamily("edgefleet_ingest_rate", "Messages per second since the previous scrape")
        rate.add_metric([], (total - before) / (now - then) if now > then else 0.0)
        yield from (received, dropped, rate)


def registry_for(service: FleetService) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FleetCollector(service))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
