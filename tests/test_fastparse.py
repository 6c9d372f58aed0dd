"""The ingest's fast telemetry path (fleet/fastparse.py) decides exactly as the protocol's parser does:
the same values for valid points, the same error code for anything else, arbitrary bytes included."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent import protocol as P
from device_agent.errors import ProtocolError
from fleet.fastparse import TelemetryParser

GOOD = P.encode(P.Telemetry({"ts": 1_700_000_000_000, "seq": 3, "inferences": 50, "lat_p95_ms": 4.2}))


def outcome(parse: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", dict(parse(data))
    except ProtocolError as exc:
        return "error", exc.code


def both(data: bytes) -> None:
    fast = outcome(TelemetryParser("f").values, data)
    slow = outcome(lambda d: P.Telemetry.parse(d).values, data)
    assert fast == slow, data


def test_known_cases_match_the_protocol() -> None:
    cases = [
        GOOD,
        b'{"ts":1,"seq":2,"a":1,"a":2}',  # duplicate key
        b'{"ts":1,"seq":2,"Bad":1}',  # not a metric name
        b'{"ts":1.5,"seq":2}',  # ts not an integer
        b'{"ts":-1,"seq":2}',
        b'{"seq":2}',  # ts missing
        b'{"ts":1,"seq":2,"x":true}',
        b'{"ts":1,"seq":2,"x":1e999}',
        b'{"ts":1,"seq":2,"x":NaN}',
        b'{"ts" : 1, "seq" : 2}',  # whitespace: valid, through the slow path
        b"[1,2]",
        b"\xff\xfe",
        b'{"ts":1,"seq":2,"x":"1"}',
        b"{" + b",".join(b'"k%d":1' % i for i in range(200)) + b',"ts":1,"seq":1}',
        b'{"ts":1,"seq":2,"pad":' + b"1" * 9000 + b"}",
    ]
    for data in cases:
        both(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_match_the_protocol(data: bytes) -> None:
    both(data)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=4))
def test_mutated_points_match_the_protocol(at: int, junk: bytes) -> None:
    both(GOOD[:at] + junk + GOOD[at + len(junk) :])


def test_topics_are_cached_per_fleet() -> None:
    parser = TelemetryParser("f")
    assert parser.device(P.topic("f", "dev-1", P.TELEMETRY)) == "dev-1"
    assert parser.device(P.topic("g", "dev-1", P.TELEMETRY)) is None  # another fleet: the slow path counts it
    assert parser.device(P.topic("f", "dev-1", P.STATUS)) is None
    assert parser.device("not/a/topic") is None
