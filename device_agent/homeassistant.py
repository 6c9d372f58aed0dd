"""Home Assistant MQTT discovery: one retained sensor config per telemetry metric of a device."""

from __future__ import annotations

import json

from device_agent import protocol as P
from device_agent.config import DeviceSection

HA_METRICS = {
    "ips": "inferences/s",
    "lat_p95_ms": "ms",
    "errors": None,
    "conf_mean": None,
    "psi_max": None,
    "cpu_pct": "%",
    "rss_mb": "MB",
}


def discovery_messages(device: DeviceSection) -> list[tuple[str, bytes]]:
    """(topic, payload) of every sensor config to publish, retained, for ``device``."""
    d = device
    out = []
    for metric, unit in HA_METRICS.items():
        doc = {
            "name": f"{d.id} {metric}",
            "unique_id": f"edgefleet_{d.fleet}_{d.id}_{metric}",
            "state_topic": P.topic(d.fleet, d.id, P.TELEMETRY),
            "value_template": f"{{{{ value_json.{metric} }}}}",
            "availability_topic": P.topic(d.fleet, d.id, P.STATUS),
            "device": {
                "identifiers": [f"edgefleet_{d.fleet}_{d.id}"],
                "name": d.id,
                "model": d.sku,
                "manufacturer": "edgefleet",
            },
        } | ({"unit_of_measurement": unit} if unit else {})
        out.append((P.ha_discovery_topic(d.fleet, d.id, metric), json.dumps(doc).encode()))
    return out
