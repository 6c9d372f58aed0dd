"""The ingest's hot path: telemetry topics and payloads decoded fast, with the protocol's validation.

``device_agent.protocol`` parses with the standard library (the device side stays lean), which costs
~55 µs per telemetry point: more than paho's own work per message. Here msgspec (a well-kept C decoder
that validates types while it decodes, ~2.5 µs per point) decodes ``dict[str, int | float]``; the checks
it does not do (key names, key count, duplicate keys, ``ts``/``seq`` integers ≥ 0) follow in a few
set lookups. Anything this path does not accept goes to the protocol's own parser, which accepts it
after all or raises the precise ``ProtocolError``: the outcome is always the protocol's.
"""

from __future__ import annotations

from typing import Any

import msgspec

from device_agent import protocol as proto
from device_agent.errors import ProtocolError

_DECODE = msgspec.json.Decoder(dict[str, int | float]).decode
_LIMIT = proto.MAX_PAYLOAD[proto.TELEMETRY]  # bytes
_CACHE_MAX = 500_000  # topics (and key names) remembered at most; cleared when full


class TelemetryParser:
    """Topic → device id for this fleet's telemetry (cached), payload → values (validated)."""

    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self._devices: dict[str, str | None] = {}  # topic -> device id, None: not our fleet's telemetry
        self._keys: set[str] = set()  # metric names already checked against METRIC_RE

    def device(self, topic: str) -> str | None:
        """The device id when ``topic`` is a valid telemetry topic of this fleet, else None (then the
        caller routes the message through the protocol's parser, which says why)."""
        try:
            return self._devices[topic]
        except KeyError:
            pass
        try:
            t = proto.parse_topic(topic)
        except ProtocolError:
            return None  # not cached: the slow path counts it under its reason every time
        if len(self._devices) >= _CACHE_MAX:
            self._devices.clear()
        device = t.device if t.kind == proto.TELEMETRY and t.fleet == self.fleet else None
        self._devices[topic] = device
        return device

    def values(self, payload: bytes) -> dict[str, Any]:
        """The telemetry values, validated as ``proto.Telemetry.parse`` does.

        Raises:
            ProtocolError: the payload is not valid telemetry (from the protocol's parser, with its reason).
        """
        if len(payload) <= _LIMIT:
            try:
                values = _DECODE(payload)
            except msgspec.MsgspecError:
                values = None
            if values is not None and self._valid(values, payload):
                return values
        return proto.Telemetry.parse(payload).values

    def _valid(self, values: dict[str, Any], payload: bytes) -> bool:
        """What msgspec's type check leaves: key count and names, no duplicate keys (a valid point has
        exactly one ``":`` per key: keys are metric names, values numbers), integer ``ts``/``seq`` ≥ 0.
        Values are finite already: JSON has no NaN/Infinity literal and msgspec refuses overflowing ones."""
        if len(values) > proto.MAX_TELEMETRY_KEYS or payload.count(b'":') != len(values):
            return False
        ts, seq = values.get("ts"), values.get("seq")
        if type(ts) is not int or type(seq) is not int or ts < 0 or seq < 0:
            return False
        if values.keys() <= self._keys:  # the usual case: names seen before (one C-level set comparison)
            return True
        for key in values:
            if key not in self._keys and not proto.METRIC_RE.fullmatch(key):
                return False
        if len(self._keys) >= _CACHE_MAX:
            self._keys.clear()
        self._keys.update(values)
        return True
