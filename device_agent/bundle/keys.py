"""Ed25519 release keys, key ids, and the trust store a device verifies against.

Key files are PEM: the private key as PKCS#8 (optionally passphrase-encrypted), the public key as
SubjectPublicKeyInfo, so standard tools (openssl, ssh-keygen -e) can read them too. The device only
parses public keys and verifies (``ed25519.py``, no ``cryptography`` import); ``cryptography`` is
imported lazily for key generation, signing and unusual PEM files.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent.bundle import ed25519
from device_agent.errors import ConfigError, KeyFileError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEYID_HEX = 16  # hex characters of sha256(raw public key) used as the key id


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key. Its ``keyid`` is derived from the key itself, so it cannot be forged."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyFileError("an Ed25519 public key is 32 bytes")

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:KEYID_HEX]

    def verify(self, signature: bytes, data: bytes) -> bool:
        return ed25519.verify(self.raw, signature, data)

    def to_pem(self) -> bytes:
        der = base64.b64encode(ed25519.SPKI_PREFIX + self.raw).decode()
        return f"-----BEGIN PUBLIC KEY-----\n{der}\n-----END PUBLIC KEY-----\n".encode()

    @classmethod
    def from_pem(cls, data: bytes, source: str = "public key") -> PublicKey:
        """Raises: KeyFileError if ``data`` is not a PEM Ed25519 public key."""
        raw = ed25519.public_key_from_pem(data)
        if raw is not None:
            return cls(raw)
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source} is not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{source} is not an Ed25519 key")
        return cls(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        return cls.from_pem(_read(path), str(path))


class PrivateKey:
    """An Ed25519 signing key."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = PublicKey(raw)

    @property
    def keyid(self) -> str:
        return self.public_key.keyid

    @classmethod
    def generate(cls) -> PrivateKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        from cryptography.hazmat.primitives import serialization

        enc: Any = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None, source: str = "private key") -> PrivateKey:
        """Raises: KeyFileError if ``data`` is not a PEM Ed25519 private key (or the passphrase is wrong)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{source} cannot be loaded: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{source} is not an Ed25519 key")
        return cls(key)

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: bytes | None = None) -> PrivateKey:
        return cls.from_pem(_read(path), passphrase, str(path))

    def save(self, stem: str | os.PathLike[str], passphrase: bytes | None = None) -> tuple[Path, Path]:
        """Write ``STEM.key`` (mode 0600, created that way, never widened) and ``STEM.pub``.

        Raises:
            ConfigError: if either file already exists (keys are never overwritten).
        """
        stem = Path(stem)
        key_path, pub_path = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
        for p in (key_path, pub_path):
            if p.exists():
                raise ConfigError(f"{p} already exists; refusing to overwrite a key")
        stem.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.to_pem(passphrase))
        os.chmod(key_path, 0o600)  # in case the umask narrowed it further, keep exactly 0600
        pub_path.write_bytes(self.public_key.to_pem())
        return key_path, pub_path


@dataclass
class TrustStore:
    """The release keys a device trusts, and how many distinct valid signatures it requires.

    Built from trust metadata (``trust.TrustMetadata.release_store``) it also carries the revoked key
    ids (a bundle signed only by them is refused ``revoked-key``), the metadata version and its expiry
    (epoch seconds; ``None`` for a plain key directory, which never expires).
    """

    keys: dict[str, PublicKey] = field(default_factory=dict)
    threshold: int = 1
    revoked: frozenset[str] = frozenset()
    version: int | None = None
    expires: int | None = None

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ConfigError("the signature threshold must be at least 1")

    def expired(self, now: float) -> bool:
        """True when the metadata behind this store has expired at ``now`` (epoch seconds)."""
        return self.expires is not None and now >= self.expires

    @classmethod
    def of(cls, keys: Iterable[PublicKey], threshold: int = 1) -> TrustStore:
        return cls({k.keyid: k for k in keys}, threshold)

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike[str]], threshold: int = 1) -> TrustStore:
        """Load public keys from files, or every ``*.pub`` in a directory."""
        keys: list[PublicKey] = []
        for p in map(Path, paths):
            keys.extend(PublicKey.load(x) for x in (sorted(p.glob("*.pub")) if p.is_dir() else [p]))
        if not keys:
            raise ConfigError("the trust store is empty: give at least one public key")
        if threshold > len(keys):
            raise ConfigError(f"threshold {threshold} exceeds the {len(keys)} trusted key(s)")
        return cls.of(keys, threshold)


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
