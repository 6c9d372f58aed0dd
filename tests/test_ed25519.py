"""The device's libcrypto Ed25519 verifier agrees with `cryptography` on every input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.bundle import PrivateKey, PublicKey, ed25519

KEYS = [PrivateKey.generate() for _ in range(3)]


def test_libcrypto_is_in_use_here() -> None:
    assert ed25519._libcrypto() is not None  # otherwise the cross-check below compares a function with itself


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(KEYS), st.binary(max_size=512), st.integers(0, 63), st.integers(0, 255), st.booleans())
def test_both_verifiers_agree(key: PrivateKey, message: bytes, pos: int, value: int, mutate: bool) -> None:
    sig = bytearray(key.sign(message))
    if mutate:
        sig[pos] = value
    raw = key.public_key.raw
    fast = ed25519._verify_libcrypto(ed25519._libcrypto(), raw, bytes(sig), message)  # type: ignore[arg-type]
    reference = ed25519._verify_cryptography(raw, bytes(sig), message)
    assert fast == reference
    assert ed25519.verify(raw, key.sign(message), message)


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\xff" * 32])
def test_bad_public_keys_never_verify(bad: bytes) -> None:
    assert not ed25519.verify(bad, b"\x00" * 64, b"msg")


def test_pem_round_trip_matches_cryptography() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pub = KEYS[0].public_key
    theirs = Ed25519PublicKey.from_public_bytes(pub.raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pub.to_pem() == theirs
    assert PublicKey.from_pem(theirs) == pub


def test_verifying_a_bundle_does_not_import_cryptography() -> None:
    code = (
        "import sys; from device_agent.bundle import TrustStore, PublicKey, verify_bundle; "
        "assert 'cryptography' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
