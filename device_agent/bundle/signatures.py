"""``manifest.sig``: Ed25519 signatures over the exact bytes of ``manifest.json``, with threshold checks."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass

from device_agent._json import Fields, canonical_json, loads_strict
from device_agent.bundle.keys import PrivateKey, TrustStore
from device_agent.errors import (
    BadSignatureError,
    MissingSignatureError,
    RevokedKeyError,
    SignatureError,
    ThresholdError,
    UnknownKeyError,
)

MAX_SIG_BYTES = 64 * 1024  # bytes; room for a few hundred signatures
MAX_SIGNATURES = 64
KEYID_RE = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


def sign(manifest_bytes: bytes, keys: Iterable[PrivateKey]) -> list[Signature]:
    return [Signature(k.keyid, k.sign(manifest_bytes)) for k in keys]


def encode(signatures: Iterable[Signature]) -> bytes:
    """Canonical ``manifest.sig`` bytes; one signature per key id, sorted by key id."""
    unique = {s.keyid: s for s in signatures}
    items = [{"keyid": k, "sig": base64.b64encode(unique[k].sig).decode()} for k in sorted(unique)]
    return canonical_json({"signatures": items})


def decode(data: bytes) -> list[Signature]:
    """Parse ``manifest.sig``.

    Raises:
        MissingSignatureError: no signature in the file.
        SignatureError: the file is malformed.
    """
    obj = loads_strict(data, max_bytes=MAX_SIG_BYTES, error=SignatureError, what="manifest.sig")
    out: list[Signature] = []
    for f in Fields(obj, "manifest.sig", SignatureError).children("signatures", max_items=MAX_SIGNATURES):
        keyid = f.string("keyid", pattern=KEYID_RE)
        try:
            sig = base64.b64decode(f.string("sig", max_len=128), validate=True)
        except (binascii.Error, ValueError):
            f.fail("sig", "is not base64")
        out.append(Signature(keyid, sig))
    if not out:
        raise MissingSignatureError("manifest.sig holds no signature")
    return out


def verify(manifest_bytes: bytes, signatures: list[Signature], trust: TrustStore) -> list[str]:
    """Return the key ids of valid trusted signatures, if they reach the trust store's threshold.

    Raises:
        RevokedKeyError: no signature is from a trusted key, and one is from a revoked key.
        UnknownKeyError: no signature is from a trusted key.
        BadSignatureError: a trusted key's signature does not match and the threshold is not met.
        ThresholdError: valid trusted signatures exist but fewer than the threshold.
    """
    valid: list[str] = []
    bad: list[str] = []
    for s in {s.keyid: s for s in signatures}.values():  # a key counts once
        key = trust.keys.get(s.keyid)
        if key is None:
            continue
        (valid if key.verify(s.sig, manifest_bytes) else bad).append(s.keyid)
    if len(valid) >= trust.threshold:
        return sorted(valid)
    if bad:
        raise BadSignatureError(f"signature by key {bad[0]} does not match manifest.json (tampered manifest?)")
    if not valid:
        ids = ", ".join(sorted({s.keyid for s in signatures}))
        if revoked := sorted({s.keyid for s in signatures} & trust.revoked):
            raise RevokedKeyError(f"bundle is signed by revoked key(s) {', '.join(revoked)} and no trusted key")
        raise UnknownKeyError(f"bundle is signed only by untrusted key(s): {ids}")
    raise ThresholdError(f"{len(valid)} valid trusted signature(s), threshold is {trust.threshold}")
