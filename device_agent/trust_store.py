"""The device's trust: ``trust/trust.json`` (signed metadata) when provisioned with it, else the
plain ``trust/*.pub`` keys and agent.toml's threshold (simple setups, which cannot rotate in-band).

The verification is pure (``device_agent.bundle.trust``); this module only reads the held version
and replaces it atomically (temp file, fsync, rename, as ``state.json``): whenever the power is
cut, the file is the old version or the new one, both verified.

Release keys a new version drops (revoked or removed) are kept in ``trust/retired/`` and count only
for the bundles already installed in the slots (``installed_store``): a revocation stops every new
bundle signed by the key, but does not leave a device with no model to boot; the operator replaces
the running model with a release signed by a trusted key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from device_agent.bundle.keys import PublicKey, TrustStore
from device_agent.bundle.trust import TRUST_NAME, TrustMetadata, format_expires, verify_chain, verify_initial
from device_agent.errors import ConfigError, TrustError
from device_agent.fsutil import atomic_write
from device_agent.home import Home


@dataclass
class DeviceTrust:
    """The trust a device verifies bundles against, replaceable at run time by ``apply``."""

    home: Home
    store: TrustStore
    metadata: TrustMetadata | None = None
    refused: str = ""  # reason code of the last refused trust update ("" when none)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    @classmethod
    def load(cls, home: Home, threshold: int) -> DeviceTrust:
        """Read ``trust/trust.json`` (verified against its own root keys) or ``trust/*.pub``.

        Raises:
            ConfigError: neither holds usable trust, or trust.json does not verify.
        """
        path = home.trust / TRUST_NAME
        if not path.exists():
            return cls(home, TrustStore.from_paths([home.trust], threshold))
        try:
            meta = verify_initial(path.read_bytes())
        except (OSError, TrustError) as exc:
            raise ConfigError(f"{path} is not usable trust metadata: {exc}") from None
        return cls(home, meta.release_store(), meta)

    def installed_store(self) -> TrustStore:
        """The store for bundles already installed: the release keys plus the retired ones, no revocations."""
        retired = self.home.trust / "retired"
        keys = dict(self.store.keys)
        if retired.is_dir():
            keys.update({k.keyid: k for k in (PublicKey.load(p) for p in sorted(retired.glob("*.pub")))})
        return TrustStore(keys, self.store.threshold)

    @property
    def version(self) -> int | None:
        return self.metadata.version if self.metadata else None

    def expired(self, now: float | None = None) -> bool:
        return self.store.expired(time.time() if now is None else now)

    def apply(self, chain: Sequence[bytes]) -> TrustMetadata:
        """Verify ``chain`` from the held version and persist the newest version atomically.

        Raises:
            TrustError: the chain does not verify (or nothing in it is newer); nothing changes.
        """
        with self.lock:
            if self.metadata is None:
                self.refused = "no-trust-metadata"
                raise TrustError("this device trusts plain keys: provision it with `edgetool flash --trust-metadata`")
            try:
                new = verify_chain(self.metadata, chain)
            except TrustError as exc:
                self.refused = exc.code
                raise
            for kid, key in self.metadata.release.keys.items():  # before the new version: never lost
                if kid not in new.release.keys:
                    atomic_write(self.home.trust / "retired" / f"{kid}.pub", key.to_pem())
            atomic_write(self.home.trust / TRUST_NAME, new.to_bytes())
            self.metadata, self.store, self.refused = new, new.release_store(), ""
            return new


def summary(home: Home, now: float | None = None) -> dict[str, Any] | None:
    """``version``, ``expires`` and ``expired`` of the held trust metadata (None: plain keys), for status."""
    try:
        meta = TrustMetadata.parse((home.trust / TRUST_NAME).read_bytes())
    except (OSError, TrustError):
        return None
    now = time.time() if now is None else now
    return {"version": meta.version, "expires": format_expires(meta.expires), "expired": meta.expired(now)}
