"""What Telegraf's ``inputs.mqtt_consumer`` makes of one MQTT message, for exactly the settings our
dashboards/telegraf-edgefleet.conf uses (no Telegraf binary is packaged for Debian or PyPI).

Implemented after Telegraf's documented behaviour:

- ``topics``: MQTT filters (``+`` one level, ``#`` the rest);
- ``topic_tag``: the tag holding the whole topic (default ``"topic"``; ``""`` = none);
- ``[[topic_parsing]]``: for a message whose topic matches the entry's ``topic`` (same number of levels,
  ``+`` any one), ``measurement`` names the metric after the level marked ``measurement``, and every
  level of ``tags`` that is not ``_`` becomes a tag of that name holding the topic's level;
- ``data_format = "json"`` (the JSON v1 parser): nested objects flattened with ``_``, numbers become
  float fields, strings and booleans dropped (no ``json_string_fields``/``tag_keys`` here);
  ``json_time_key`` + ``json_time_format = "unix_ms"`` set the timestamp and remove the key.

Any other setting is refused, so the config cannot drift away from what this interprets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CONNECTION_KEYS = {"servers", "qos", "client_id", "username", "password", "tls_ca", "persistent_session"}
INTERPRETED_KEYS = {"topics", "topic_tag", "data_format", "json_time_key", "json_time_format", "topic_parsing"}


@dataclass
class Metric:
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    fields: dict[str, float] = field(default_factory=dict)
    time_s: float | None = None


def _levels_match(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}_{key}" if prefix else key
        if isinstance(value, dict):
            out |= _flatten(value, name)
        else:
            out[name] = value
    return out


def consume(plugin: dict[str, Any], topic: str, payload: bytes) -> Metric | None:
    """The metric Telegraf would emit for this message, or None when its topics do not subscribe to it."""
    unknown = set(plugin) - CONNECTION_KEYS - INTERPRETED_KEYS
    if unknown:
        raise ValueError(f"settings this interpreter does not know: {sorted(unknown)}")
    if plugin.get("data_format") != "json" or plugin.get("json_time_format", "unix_ms") != "unix_ms":
        raise ValueError("only data_format = json with json_time_format = unix_ms is interpreted")
    if not any(_levels_match(f, topic) for f in plugin["topics"]):
        return None
    values = _flatten(json.loads(payload))
    metric = Metric("mqtt_consumer")
    time_key = plugin.get("json_time_key")
    if time_key and time_key in values:
        metric.time_s = float(values.pop(time_key)) / 1000.0
    metric.fields = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    topic_tag = plugin.get("topic_tag", "topic")
    if topic_tag:
        metric.tags[topic_tag] = topic
    for rule in plugin.get("topic_parsing", []):
        if not _levels_match(rule["topic"], topic):
            continue
        levels = topic.split("/")
        for i, name in enumerate(rule.get("measurement", "").split("/")):
            if name == "measurement":
                metric.name = levels[i]
        for i, name in enumerate(rule.get("tags", "").split("/")):
            if name and name != "_":
                metric.tags[name] = levels[i]
    return metric
