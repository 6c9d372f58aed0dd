"""A small trust repository for tests (after python-tuf's RepositorySimulator): root and release keys,
and trust versions written with the same code as ``edgetool trust init/update``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from device_agent.bundle import PrivateKey
from device_agent.bundle.trust import TrustMetadata
from toolchain import trust as T

YEAR = 365 * 86400


@dataclass
class TrustRepo:
    """Root keys r0..r2 (threshold 2) and release keys rel0..rel2; ``versions`` holds every version written."""

    now: float
    roots: list[PrivateKey] = field(default_factory=lambda: [PrivateKey.generate() for _ in range(3)])
    releases: list[PrivateKey] = field(default_factory=lambda: [PrivateKey.generate() for _ in range(3)])
    versions: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        data = T.init(self.roots, 2, [self.releases[0].public_key], 1, int(self.now) + YEAR)
        self.versions.append(data)

    @property
    def current(self) -> TrustMetadata:
        return TrustMetadata.parse(self.versions[-1])

    def update(self, edit: T.TrustEdit, signers: list[PrivateKey] | None = None) -> bytes:
        _, data = T.update(self.current, edit, signers or self.roots[:2])
        self.versions.append(data)
        return data

    def add_release(self, i: int) -> bytes:
        return self.update(T.TrustEdit(add_release=(self.releases[i].public_key,)))

    def revoke_release(self, i: int) -> bytes:
        return self.update(T.TrustEdit(revoke_release=(self.releases[i].keyid,)))

    def rotate_root(self) -> bytes:
        """Replace the oldest root key by a new one: signed by the old threshold and the new one."""
        new = PrivateKey.generate()
        edit = T.TrustEdit(add_root=(new.public_key,), remove_root=(self.roots[0].keyid,))
        data = self.update(edit, [*self.roots[1:], new])
        self.roots = [*self.roots[1:], new]
        return data

    def write(self, directory: Path) -> list[Path]:
        """Every version as ``trust-vN.json`` in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, data in enumerate(self.versions, start=1):
            path = directory / f"trust-v{i}.json"
            path.write_bytes(data)
            paths.append(path)
        return paths
