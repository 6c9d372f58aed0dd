"""Property tests: arbitrary or mutated bytes never crash the bundle reader or protocol parser.

Only the project's own error types may come out (BundleError / ProtocolError / TrustError), never another
exception. Mutations start from a real signed bundle so the fuzzer reaches the deeper checks.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent import protocol as P
from device_agent.bundle import PrivateKey, TrustStore, read_bundle, verify_bundle
from device_agent.bundle import trust as trust_doc
from device_agent.errors import BundleError, ProtocolError, TrustError
from tests.support.bundles import simple_bundle

KEY = PrivateKey.generate()
TRUST = TrustStore.of([KEY.public_key])
VALID = simple_bundle(KEY)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _verify_or_refuse(data: bytes) -> None:
    with contextlib.suppress(BundleError):
        verify_bundle(data, TRUST, highest_sequence={"digits": 1})
    with contextlib.suppress(BundleError):
        read_bundle(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_reader_on_arbitrary_bytes(data: bytes) -> None:
    _verify_or_refuse(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_reader_on_mutated_bundles(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    _verify_or_refuse(bytes(data))


@FUZZ
@given(st.integers(0, len(VALID)))
def test_reader_on_truncated_bundles(cut: int) -> None:
    _verify_or_refuse(VALID[:cut])


def test_the_bundle_the_fuzzer_mutates_is_valid() -> None:
    assert verify_bundle(VALID, TRUST).manifest.name == "digits"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)


@FUZZ
@given(st.sampled_from(P.KINDS), st.binary(max_size=2048))
def test_protocol_parser_on_arbitrary_bytes(kind: str, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        P.parse_payload(kind, data)


@FUZZ
@given(st.sampled_from(P.KINDS), json_values)
def test_protocol_parser_on_arbitrary_json(kind: str, value: object) -> None:
    import json

    try:
        data = json.dumps(value).encode()
    except ValueError:
        return
    with contextlib.suppress(ProtocolError):
        P.parse_payload(kind, data)


@FUZZ
@given(st.text(max_size=300))
def test_topic_parser_on_arbitrary_text(name: str) -> None:
    with contextlib.suppress(ProtocolError):
        P.parse_topic(name)


@pytest.mark.parametrize("kind", P.KINDS)
def test_protocol_parser_on_empty_payload(kind: str) -> None:
    with pytest.raises(ProtocolError):
        P.parse_payload(kind, b"")


# --- trust metadata: only TrustError, whatever the bytes ------------------------------------------

ROOT = PrivateKey.generate()
TRUST_V1 = (
    trust_doc.TrustMetadata(
        1, 2_000_000_000, trust_doc.Role.of([ROOT.public_key], 1), trust_doc.Role.of([KEY.public_key], 1)
    )
    .sign([ROOT])
    .to_bytes()
)


def _trust_or_refuse(data: bytes) -> None:
    held = trust_doc.verify_initial(TRUST_V1)
    with contextlib.suppress(TrustError):
        trust_doc.verify_chain(held, [data])
    with contextlib.suppress(TrustError):
        trust_doc.verify_initial(data)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(TRUST_V1) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_trust_verifier_on_mutated_documents(flips: list[tuple[int, int]]) -> None:
    data = bytearray(TRUST_V1)
    for pos, value in flips:
        data[pos] = value
    _trust_or_refuse(bytes(data))


@FUZZ
@given(st.integers(0, len(TRUST_V1)), st.binary(max_size=64))
def test_trust_verifier_on_truncated_or_arbitrary_documents(cut: int, noise: bytes) -> None:
    _trust_or_refuse(TRUST_V1[:cut])
    _trust_or_refuse(noise)
