"""The fleet's trust metadata: the same signed ``trust.json`` chain the devices hold, so the fleet manager
accepts exactly the bundles its devices will accept, and ``fleetctl trust push`` delivers newer versions.

Every version is verified with the device's own code (``device_agent.bundle.trust``) before it is
stored; the stored chain survives restarts (``fleetctl serve --trust-metadata`` walks it from the
provisioned version). Devices get the newest ``MAX_CHAIN`` versions as one retained ``cmd/trust``
per device, so a device that is offline now receives it when it reconnects and walks the chain from
the version it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from device_agent import protocol as P
from device_agent.bundle.trust import MAX_CHAIN, TrustMetadata, verify_chain, verify_initial
from fleet.store import Store

Publish = Callable[[list[tuple[str, bytes]]], None]  # (topic, payload) pairs, published retained at QoS 1


class FleetTrust:
    """The version in force, the stored chain, and its delivery to devices."""

    def __init__(self, store: Store, fleet: str, metadata: TrustMetadata, publish: Publish | None = None) -> None:
        self.store, self.fleet, self.metadata = store, fleet, metadata
        self.publish = publish

    @classmethod
    def load(cls, store: Store, fleet: str, provisioned: bytes, publish: Publish | None = None) -> FleetTrust:
        """Start from the provisioned document (verified against its own root keys, recorded if new)
        and walk the versions pushed since.

        Raises:
            TrustError: the document, or a stored version after it, does not verify.
            ConflictError: the store holds another document under the provisioned version.
        """
        meta = verify_initial(provisioned)
        store.trust.add(fleet, meta.version, meta.to_bytes(), meta.expires, "serve")
        newer = [r.document.encode() for r in store.trust.chain(fleet, MAX_CHAIN) if r.version > meta.version]
        return cls(store, fleet, verify_chain(meta, newer) if newer else meta, publish)

    def push(self, documents: Sequence[bytes], actor: str) -> TrustMetadata:
        """Verify ``documents`` (the next version, or several in order) from the version in force and
        store them; pushing the version in force again only re-sends it.

        Raises:
            TrustError: a document does not verify (``trust-signature``, ``trust-version``, ``bad-trust``).
        """
        docs = [TrustMetadata.parse(d) for d in documents]
        if [m.to_bytes() for m in docs] == [self.metadata.to_bytes()]:
            return self.metadata
        new = verify_chain(self.metadata, [m.to_bytes() for m in docs])
        for meta in docs:
            if meta.version > self.metadata.version:
                self.store.trust.add(self.fleet, meta.version, meta.to_bytes(), meta.expires, actor)
        self.metadata = new
        return new

    def command(self) -> P.TrustCommand:
        """``cmd/trust`` with the newest stored versions, oldest first (one request id per version)."""
        chain = tuple(r.document.encode() for r in self.store.trust.chain(self.fleet, MAX_CHAIN))
        return P.TrustCommand(request_id=f"trust-v{self.metadata.version}", chain=chain)

    def send(self, devices: Iterable[str]) -> int:
        """Publish the retained ``cmd/trust`` to each device; returns how many. No-op without a publisher."""
        if self.publish is None:
            return 0
        payload = P.encode(self.command())
        messages = [(P.topic(self.fleet, d, P.CMD_TRUST), payload) for d in devices]
        if messages:
            self.publish(messages)
        return len(messages)
