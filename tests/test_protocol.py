"""Protocol v1: topic builders/parsers, payload round trips, limits and clear errors."""

from __future__ import annotations

import json

import pytest

from device_agent import protocol as P
from device_agent.errors import PayloadError, PayloadTooLargeError, TopicError

SHA = "a" * 64


def test_topic_round_trip_for_every_kind() -> None:
    for kind in P.KINDS:
        name = P.topic("plant-1", "cam-007", kind)
        assert name == f"edgefleet/v1/plant-1/cam-007/{kind}"
        assert P.parse_topic(name) == P.Topic("plant-1", "cam-007", kind)


@pytest.mark.parametrize(
    "name",
    [
        "edgefleet/v2/f/d/status",
        "edgefleet/v1/f/d",
        "edgefleet/v1/F/d/status",
        "edgefleet/v1/f/d_1/status",
        "edgefleet/v1/f/d/cmd/reboot",
        "edgefleet/v1/f/+/telemetry",
        "other/v1/f/d/status",
    ],
)
def test_bad_topics_are_refused(name: str) -> None:
    with pytest.raises(TopicError):
        P.parse_topic(name)


def test_builders_refuse_bad_ids_and_kinds() -> None:
    with pytest.raises(TopicError):
        P.topic("fleet", "../x", P.STATUS)
    with pytest.raises(TopicError):
        P.topic("fleet", "dev", "bogus")
    assert P.subscription("fleet", P.TELEMETRY) == "edgefleet/v1/fleet/+/telemetry"


def test_status() -> None:
    assert P.parse_status(b"online") == "online"
    with pytest.raises(PayloadError):
        P.parse_status(b"maybe")


def test_info_round_trip() -> None:
    model = P.ModelRef("digits", "1.0.0", 3, SHA)
    info = P.Info(
        "0.1.0", "tflite", "2.3.0", "rpi4", "aarch64", 4 << 30, model, "a", {"a": model, "b": None}, 10**9, ("lab",)
    )
    assert P.Info.parse(P.encode(info)) == info


def test_telemetry_is_flat_numbers_and_round_trips() -> None:
    values = {"ts": 1_700_000_000_000, "seq": 7, "ips": 12.5, "lat_p95_ms": 3.2, "class_3": 4}
    t = P.Telemetry.parse(json.dumps(values).encode())
    assert (t.ts, t.seq, t.values["ips"]) == (1_700_000_000_000, 7, 12.5)
    assert json.loads(P.encode(t)) == values


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"ts": 1, "seq": 1, "ips": "fast"}', "must be a finite number"),
        (b'{"ts": 1, "seq": 1, "nested": {"a": 1}}', "must be a finite number"),
        (b'{"ts": 1, "seq": 1, "Bad-Key": 1}', "not a metric name"),
        (b'{"seq": 1}', "ts is required"),
        (b'{"ts": 1, "seq": 1, "x": NaN}', "not valid JSON"),
        (b'{"ts": 1, "ts": 2, "seq": 1}', "duplicate key"),
        (b"[1, 2]", "must be an object"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 4000 + b"]" * 4000, "not valid JSON"),  # nesting deeper than the parser's recursion limit
    ],
)
def test_malformed_telemetry_gets_a_clear_error(payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        P.Telemetry.parse(payload)


def test_oversized_payload() -> None:
    with pytest.raises(PayloadTooLargeError):
        P.Telemetry.parse(b" " * (P.MAX_PAYLOAD[P.TELEMETRY] + 1))


def test_deployment_event_round_trip() -> None:
    ev = P.DeploymentEvent("dep-1", P.DeploymentState.REJECTED, 123, "hash-mismatch", "model differs", "1.1.0")
    assert P.DeploymentEvent.parse(P.encode(ev)) == ev
    assert ev.state.terminal and not P.DeploymentState.PROBATION.terminal
    with pytest.raises(PayloadError, match="state must be one of"):
        P.DeploymentEvent.parse(b'{"deployment_id": "d", "state": "DONE", "ts": 1}')


def test_commands_round_trip() -> None:
    commands = [
        P.DeployCommand("r-1", "dep-1", "http://127.0.0.1:8080/a/x.efb", SHA, 1234),
        P.RollbackCommand("r-2", "dep-1", "gate tripped"),
        P.PingCommand("r-3"),
        P.ConfigCommand("r-4", {"telemetry_interval_s": 5}),
    ]
    for cmd in commands:
        assert P.parse_payload(cmd.kind, P.encode(cmd)) == cmd


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        (
            P.CMD_DEPLOY,
            {"request_id": "r", "deployment_id": "d", "url": "file:///etc/passwd", "sha256": SHA, "size": 1},
            "http",
        ),
        (
            P.CMD_DEPLOY,
            {"request_id": "r", "deployment_id": "d", "url": "http://h/x", "sha256": "xyz", "size": 1},
            "sha256",
        ),
        (
            P.CMD_DEPLOY,
            {"request_id": "r", "deployment_id": "d", "url": "http://h/x", "sha256": SHA, "size": 0},
            "size",
        ),
        (P.CMD_PING, {"request_id": "UPPER"}, "request_id"),
        (P.CMD_CONFIG, {"request_id": "r", "settings": {"x": [1]}}, "scalar"),
    ],
)
def test_bad_commands(kind: str, payload: dict[str, object], message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        P.parse_command(kind, json.dumps(payload).encode())


def test_deep_nesting_is_refused_whatever_the_recursion_limit() -> None:
    """Libraries in the same process (torch, onnx2tf) raise Python's recursion limit: the parser's own depth
    limit must not depend on it."""
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(PayloadError, match="nested deeper than 64"):
            P.Telemetry.parse(b"[" * 4000 + b"]" * 4000)
    finally:
        sys.setrecursionlimit(old)
