"""Trust metadata rotations through the pure verifier, as a table (after python-tuf's
test_updater_key_rotations.py): each scenario is a list of root-key sets, thresholds and signers per
version; the client walks the chain from version 1 and must end at the expected version or refuse
with the expected error code."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from device_agent.bundle import PrivateKey
from device_agent.bundle.trust import (
    Role,
    TrustMetadata,
    describe,
    verify_chain,
    verify_initial,
    verify_next,
)
from device_agent.errors import TrustError, TrustFormatError

NOW = 1_800_000_000  # a controlled clock (epoch seconds)
DAY = 86400
KEYS = [PrivateKey.generate() for _ in range(6)]  # root keys R0..R5
RELEASE = [PrivateKey.generate() for _ in range(3)]


@dataclass(frozen=True)
class V:
    """One version: root keys (indices into KEYS), root threshold, signers (indices), release keys."""

    keys: tuple[int, ...]
    threshold: int
    sigs: tuple[int, ...]
    release: tuple[int, ...] = (0,)
    release_threshold: int = 1
    revoked: frozenset[str] = field(default_factory=frozenset)
    expires: int = NOW + 365 * DAY
    version: int | None = None  # None: the position in the chain (1, 2, ...)


def build(v: V, version: int) -> bytes:
    meta = TrustMetadata(
        version=v.version or version,
        expires=v.expires,
        root=Role.of([KEYS[i].public_key for i in v.keys], v.threshold),
        release=Role.of([RELEASE[i].public_key for i in v.release], v.release_threshold),
        revoked=v.revoked,
    )
    return meta.sign([KEYS[i] for i in v.sigs]).to_bytes()


ROOT1 = V((0, 1, 2), 2, (0, 1))

# name: (versions after version 1, expected newest version or the error code)
SCENARIOS: dict[str, tuple[list[V], int | str]] = {
    "no change, re-signed": ([V((0, 1, 2), 2, (0, 1))], 2),
    "add a root key": ([V((0, 1, 2, 3), 2, (0, 1))], 2),
    "add a root key, old threshold not met": ([V((0, 1, 2, 3), 2, (0, 3))], "trust-signature"),
    "remove a root key": ([V((0, 1), 2, (0, 1))], 2),
    "root threshold up": ([V((0, 1, 2), 3, (0, 1, 2))], 2),
    "root threshold up, signed by too few of the new": ([V((0, 1, 2), 3, (0, 1))], "trust-signature"),
    "root threshold down": ([V((0, 1, 2), 1, (0, 1))], 2),
    "threshold down, then one key suffices": ([V((0, 1, 2), 1, (0, 1)), V((0, 1, 2), 1, (2,))], 3),
    "rotation, overlapping key sets": ([V((1, 2, 3), 2, (0, 1, 3))], 2),
    "rotation, disjoint key sets": ([V((3, 4, 5), 2, (0, 1, 3, 4))], 2),
    "rotation, disjoint, new keys only": ([V((3, 4, 5), 2, (3, 4))], "trust-signature"),
    "rotation, disjoint, old keys only": ([V((3, 4, 5), 2, (0, 1))], "trust-signature"),
    "missing signature (one of two)": ([V((0, 1, 2), 2, (0,))], "trust-signature"),
    "no signature": ([V((0, 1, 2), 2, ())], "trust-signature"),
    "signature from a removed key": ([V((0, 1), 2, (0, 1)), V((0, 1), 2, (0, 2))], "trust-signature"),
    "two rotations, walked": ([V((1, 2, 3), 2, (1, 2, 3)), V((3, 4, 5), 2, (2, 3, 4, 5))], 3),
    "version skip of 3": ([V((0, 1, 2), 2, (0, 1), version=4)], "trust-version"),
    "replayed older version": ([V((0, 1, 2), 2, (0, 1), version=1)], "trust-version"),
    "release key added": ([V((0, 1, 2), 2, (0, 1), release=(0, 1))], 2),
    "release key revoked": ([V((0, 1, 2), 2, (0, 1), release=(1,), revoked=frozenset({RELEASE[0].keyid}))], 2),
    "release threshold up": ([V((0, 1, 2), 2, (0, 1), release=(0, 1, 2), release_threshold=2)], 2),
    "expired version still walks": ([V((0, 1, 2), 2, (0, 1), expires=NOW - DAY)], 2),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_rotation_scenario(name: str) -> None:
    steps, expected = SCENARIOS[name]
    trusted = verify_initial(build(ROOT1, 1))
    chain = [build(v, i + 2) for i, v in enumerate(steps)]
    if isinstance(expected, int):
        assert verify_chain(trusted, chain).version == expected
    else:
        with pytest.raises(TrustError) as info:
            verify_chain(trusted, chain)
        assert info.value.code == expected


def test_chain_skips_versions_already_held_but_refuses_a_pure_replay() -> None:
    v1, v2, v3 = build(ROOT1, 1), build(ROOT1, 2), build(ROOT1, 3)
    held = verify_chain(verify_initial(v1), [v1, v2])
    assert verify_chain(held, [v1, v2, v3]).version == 3  # a retained chain is re-delivered whole
    with pytest.raises(TrustError) as info:
        verify_chain(held, [v1, v2])
    assert info.value.code == "trust-version"


def test_expiry_is_reported_not_refused() -> None:
    meta = verify_initial(build(replace(ROOT1, expires=NOW + DAY), 1))
    assert not meta.expired(NOW) and meta.expired(NOW + DAY)
    assert describe(meta, NOW + 2 * DAY)["expired"] is True
    store = meta.release_store()
    assert store.expired(NOW + DAY) and not store.expired(NOW) and store.version == 1


def test_release_store_carries_revocations() -> None:
    v = V((0, 1, 2), 2, (0, 1), release=(1,), revoked=frozenset({RELEASE[0].keyid}))
    store = verify_initial(build(v, 1)).release_store()
    assert set(store.keys) == {RELEASE[1].keyid} and store.revoked == {RELEASE[0].keyid}


def test_initial_version_needs_its_own_threshold() -> None:
    with pytest.raises(TrustError) as info:
        verify_initial(build(V((0, 1, 2), 2, (0,)), 1))
    assert info.value.code == "trust-signature"


def test_tampered_signed_part_fails_signatures() -> None:
    data = build(ROOT1, 1).replace(b'"version":1', b'"version":2')
    with pytest.raises(TrustError) as info:
        verify_next(verify_initial(build(ROOT1, 1)), data)
    assert info.value.code == "trust-signature"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],
        lambda d: d.replace(b"edgefleet-trust/1", b"edgefleet-trust/9"),
        lambda d: d.replace(b'"threshold":2', b'"threshold":9'),
        lambda d: d.replace(b'"revoked":[]', b'"revoked":["' + RELEASE[0].keyid.encode() + b'"]'),
        lambda d: d.replace(b'Z"', b'+01:00"'),
        lambda d: b" " * 70_000,
    ],
    ids=["truncated", "format", "threshold-over-keys", "revoked-release-key", "expires-offset", "oversized"],
)
def test_malformed_documents_are_refused_as_bad_trust(mutate: object) -> None:
    data = mutate(build(ROOT1, 1))  # type: ignore[operator]
    with pytest.raises(TrustFormatError) as info:
        TrustMetadata.parse(data)
    assert info.value.code == "bad-trust"


def test_documents_are_canonical_and_round_trip() -> None:
    data = build(ROOT1, 1)
    meta = TrustMetadata.parse(data)
    assert meta.to_bytes() == data and meta == verify_initial(data)
