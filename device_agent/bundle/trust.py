"""Trust metadata (``trust.json``): which keys may sign bundles, and how that may change in the field.

Pure, after python-tuf's ``trusted_metadata_set``: bytes in, a ``TrustMetadata`` or a specific
``TrustError`` out; no file, no socket, no clock (callers pass ``now``). The document is canonical
JSON ``{"signed": {...}, "signatures": [{"keyid", "sig"}]}``; the signatures cover the canonical
bytes of ``signed``, which holds:

- ``format`` (``edgefleet-trust/1``), ``version`` (an integer that only grows, by one per step),
  ``expires`` (UTC, ``YYYY-MM-DDTHH:MM:SSZ``);
- ``root``: the keys (offline) that sign trust metadata, and their threshold;
- ``release``: the keys that sign bundles, and their threshold;
- ``revoked``: key ids that must never be trusted again (a bundle signed only by them is refused
  ``revoked-key``).

Version 1 is signed by the threshold of its own root keys. Version N+1 is valid only when signed by
the threshold of version N's root keys AND the threshold of its own, so a stolen root key below
threshold can neither rotate trust nor be used after its removal. An expired version still verifies
(a device must be able to walk a chain of old versions); callers ask ``expired(now)``.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from device_agent._json import Fields, JsonObject, canonical_json, loads_strict
from device_agent.bundle.keys import PrivateKey, PublicKey, TrustStore
from device_agent.bundle.signatures import KEYID_RE, MAX_SIGNATURES, Signature
from device_agent.errors import KeyFileError, TrustFormatError, TrustSignatureError, TrustVersionError

TRUST_FORMAT = "edgefleet-trust/1"
TRUST_NAME = "trust.json"
MAX_TRUST_BYTES = 64 * 1024  # bytes; a document with MAX_KEYS keys per role is ~8 KiB
MAX_KEYS = 32  # per role
MAX_REVOKED = 512
MAX_CHAIN = 32  # versions one update may walk
MAX_VERSION = 2**31
EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
EXPIRES_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@dataclass(frozen=True)
class Role:
    """A set of keys and how many of them must sign."""

    keys: Mapping[str, PublicKey]
    threshold: int

    @classmethod
    def of(cls, keys: Iterable[PublicKey], threshold: int) -> Role:
        return cls({k.keyid: k for k in keys}, threshold)

    def to_dict(self) -> JsonObject:
        return {
            "keys": {kid: base64.b64encode(k.raw).decode() for kid, k in sorted(self.keys.items())},
            "threshold": self.threshold,
        }

    @classmethod
    def parse(cls, f: Fields) -> Role:
        keys: dict[str, PublicKey] = {}
        raw_keys = f.raw_obj("keys", max_keys=MAX_KEYS)
        for kid, value in raw_keys.items():
            if not isinstance(value, str) or not KEYID_RE.fullmatch(kid):
                f.fail("keys", f"entry {kid[:20]!r} must map a key id to a base64 Ed25519 public key")
            try:
                key = PublicKey(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError, KeyFileError):  # KeyFileError: not 32 bytes
                f.fail("keys", f"entry {kid} is not a base64 Ed25519 public key")
            if key.keyid != kid:
                f.fail("keys", f"entry {kid} holds the key of id {key.keyid}")
            keys[kid] = key
        threshold = f.integer("threshold", lo=1, hi=MAX_KEYS)
        if threshold > len(keys):
            f.fail("threshold", f"{threshold} exceeds the {len(keys)} key(s)")
        return cls(keys, threshold)


@dataclass(frozen=True)
class TrustMetadata:
    """One verified-structure version of the trust document (signatures checked by ``verify_*``)."""

    version: int
    expires: int  # epoch seconds, UTC
    root: Role
    release: Role
    revoked: frozenset[str] = frozenset()
    signatures: tuple[Signature, ...] = field(default=(), compare=False)

    def signed_dict(self) -> JsonObject:
        return {
            "format": TRUST_FORMAT,
            "version": self.version,
            "expires": format_expires(self.expires),
            "root": self.root.to_dict(),
            "release": self.release.to_dict(),
            "revoked": sorted(self.revoked),
        }

    def signed_bytes(self) -> bytes:
        """The exact bytes the signatures cover."""
        return canonical_json(self.signed_dict())

    def to_bytes(self) -> bytes:
        """The canonical document, signatures sorted by key id."""
        sigs = {s.keyid: s for s in self.signatures}
        items = [{"keyid": k, "sig": base64.b64encode(sigs[k].sig).decode()} for k in sorted(sigs)]
        return canonical_json({"signed": self.signed_dict(), "signatures": items})

    def sign(self, keys: Iterable[PrivateKey]) -> TrustMetadata:
        """A copy with signatures by ``keys`` added (a key signs once)."""
        data = self.signed_bytes()
        return replace(self, signatures=self.signatures + tuple(Signature(k.keyid, k.sign(data)) for k in keys))

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def release_store(self) -> TrustStore:
        """The trust store bundles are verified against under this version."""
        return TrustStore(dict(self.release.keys), self.release.threshold, self.revoked, self.version, self.expires)

    @classmethod
    def parse(cls, data: bytes) -> TrustMetadata:
        """Parse the document's structure; signatures are NOT checked here.

        Raises:
            TrustFormatError: not JSON, over the size limit, or not the schema.
        """
        obj = loads_strict(data, max_bytes=MAX_TRUST_BYTES, error=TrustFormatError, what=TRUST_NAME)
        doc = Fields(obj, "trust", TrustFormatError)
        f = doc.child("signed")
        if f.string("format", max_len=64) != TRUST_FORMAT:
            f.fail("format", f"must be {TRUST_FORMAT}")
        release = Role.parse(f.child("release"))
        revoked = frozenset(f.strings("revoked", max_items=MAX_REVOKED, max_len=16))
        if bad := [k for k in revoked if not KEYID_RE.fullmatch(k)]:
            f.fail("revoked", f"holds {bad[0][:20]!r}, not a key id")
        if both := sorted(revoked & set(release.keys)):
            f.fail("revoked", f"key {both[0]} is both a release key and revoked")
        return cls(
            version=f.integer("version", lo=1, hi=MAX_VERSION),
            expires=parse_expires(f.string("expires", pattern=EXPIRES_RE, max_len=20)),
            root=Role.parse(f.child("root")),
            release=release,
            revoked=revoked,
            signatures=tuple(_signatures(doc)),
        )


def _signatures(doc: Fields) -> list[Signature]:
    out: list[Signature] = []
    for f in doc.children("signatures", max_items=MAX_SIGNATURES):
        keyid = f.string("keyid", pattern=KEYID_RE)
        try:
            out.append(Signature(keyid, base64.b64decode(f.string("sig", max_len=128), validate=True)))
        except (binascii.Error, ValueError):
            f.fail("sig", "is not base64")
    return out


def parse_expires(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SSZ`` to epoch seconds. Raises: TrustFormatError."""
    try:
        return calendar.timegm(time.strptime(text, EXPIRES_FORMAT))
    except ValueError:
        raise TrustFormatError(f"expires {text[:40]!r} is not a UTC time like 2027-01-31T00:00:00Z") from None


def format_expires(epoch: int) -> str:
    return time.strftime(EXPIRES_FORMAT, time.gmtime(epoch))


def _check_threshold(meta: TrustMetadata, role: Role, whose: str) -> None:
    data = meta.signed_bytes()
    valid = {s.keyid for s in meta.signatures if s.keyid in role.keys and role.keys[s.keyid].verify(s.sig, data)}
    if len(valid) < role.threshold:
        raise TrustSignatureError(
            f"trust version {meta.version} has {len(valid)} valid signature(s) from {whose} root keys, "
            f"threshold is {role.threshold}"
        )


def verify_initial(data: bytes) -> TrustMetadata:
    """Verify a document trusted by provisioning (no predecessor): signed by its own root threshold.

    Raises:
        TrustFormatError, TrustSignatureError
    """
    meta = TrustMetadata.parse(data)
    _check_threshold(meta, meta.root, "its own")
    return meta


def verify_next(trusted: TrustMetadata, data: bytes) -> TrustMetadata:
    """Verify the version that follows ``trusted``.

    Raises:
        TrustFormatError: the bytes are not a trust document.
        TrustVersionError: the version is not exactly ``trusted.version + 1``.
        TrustSignatureError: below the threshold of the previous or of its own root keys.
    """
    meta = TrustMetadata.parse(data)
    if meta.version <= trusted.version:
        raise TrustVersionError(f"trust version {meta.version} is not newer than the held version {trusted.version}")
    if meta.version != trusted.version + 1:
        raise TrustVersionError(
            f"trust version {meta.version} skips versions: the held version is {trusted.version}, "
            f"send every version from {trusted.version + 1}"
        )
    _check_threshold(meta, trusted.root, f"version {trusted.version}'s")
    _check_threshold(meta, meta.root, "its own")
    return meta


def verify_chain(trusted: TrustMetadata, chain: Sequence[bytes]) -> TrustMetadata:
    """Walk ``chain`` from the held version and return the newest verified version.

    Versions at or below the held one are skipped (a retained chain is re-delivered whole), but a
    chain with nothing newer is refused as a replay. Expiry is not checked: an expired newest
    version is returned, and the caller reports it (``expired(now)``).

    Raises:
        TrustVersionError: nothing newer than the held version, a gap, or a chain over ``MAX_CHAIN``.
        TrustFormatError, TrustSignatureError: from the first step that fails.
    """
    if len(chain) > MAX_CHAIN:
        raise TrustVersionError(f"a trust chain of {len(chain)} versions is over the limit of {MAX_CHAIN}")
    current = trusted
    for data in chain:
        if TrustMetadata.parse(data).version <= trusted.version:
            continue
        current = verify_next(current, data)
    if current is trusted:
        raise TrustVersionError(f"no trust version newer than the held version {trusted.version}")
    return current


def describe(meta: TrustMetadata, now: float) -> dict[str, Any]:
    """A JSON-ready summary (``edgetool trust show``, ``fleetctl`` and the API)."""
    return {
        "version": meta.version,
        "expires": format_expires(meta.expires),
        "expired": meta.expired(now),
        "root_keys": sorted(meta.root.keys),
        "root_threshold": meta.root.threshold,
        "release_keys": sorted(meta.release.keys),
        "release_threshold": meta.release.threshold,
        "revoked": sorted(meta.revoked),
        "signed_by": sorted({s.keyid for s in meta.signatures}),
    }
