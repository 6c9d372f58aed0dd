"""Verify a bundle: bytes in, a ``Bundle`` or a specific ``BundleError`` out. No file, no socket.

Order matters: structure first (cheap, and protects the rest), then the signatures over the exact
manifest bytes, and only then is the manifest parsed and trusted; cheap policy checks (downgrade,
requirements, file set) run before the expensive hashing of the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import device_agent.bundle.signatures as sigs
from device_agent._version import at_least
from device_agent.bundle.archive import Archive, Buffer, Limits
from device_agent.bundle.keys import TrustStore
from device_agent.bundle.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, SIGNATURE_NAME, Manifest
from device_agent.errors import (
    BundleFormatError,
    DowngradeError,
    HashMismatchError,
    MissingFileError,
    MissingSignatureError,
    RequirementError,
    SizeMismatchError,
    TrustExpiredError,
    UnexpectedFileError,
)


@dataclass(frozen=True)
class DeviceCapabilities:
    """What a device offers, for the requirement checks. ``None`` means unknown (not checked)."""

    runtimes: Mapping[str, str] = field(default_factory=dict)  # runtime name -> installed version
    agent_version: str | None = None
    arch: str | None = None
    ram_bytes: int | None = None
    flash_free_bytes: int | None = None


@dataclass(frozen=True)
class Bundle:
    """A bundle whose structure and file hashes are checked; ``signed_by`` is set once verified."""

    manifest: Manifest
    manifest_bytes: bytes
    signatures: tuple[sigs.Signature, ...]
    signed_by: tuple[str, ...]
    archive: Archive

    def read(self, path: str) -> bytes:
        """The content of a manifest-listed file (already hash-checked)."""
        entry = self.manifest.file(path)
        return self.archive.read(path, entry.size)

    def chunks(self, path: str) -> Iterator[memoryview | bytes]:
        self.manifest.file(path)
        return self.archive.chunks(path)

    @property
    def files(self) -> dict[str, bytes]:
        return {e.path: self.read(e.path) for e in self.manifest.all_files()}


def read_bundle(data: Buffer, *, limits: Limits | None = None, check_hashes: bool = True) -> Bundle:
    """Check structure and (by default) file hashes WITHOUT checking signatures: for inspection only.

    Raises:
        BundleError: a specific subclass for each kind of defect.
    """
    archive = Archive(data, limits)
    manifest_bytes, signatures = _signed_parts(archive)
    manifest = Manifest.from_json(manifest_bytes)
    _check_file_set(archive, manifest)
    if check_hashes:
        _check_hashes(archive, manifest)
    return Bundle(manifest, manifest_bytes, tuple(signatures), (), archive)


def verify_bundle(
    data: Buffer,
    trust: TrustStore,
    *,
    limits: Limits | None = None,
    highest_sequence: Mapping[str, int] | None = None,
    device: DeviceCapabilities | None = None,
    now: float | None = None,
) -> Bundle:
    """Fully verify a bundle for installation.

    ``highest_sequence`` maps bundle names to the device's highest committed sequence; a bundle
    must be strictly above it. ``device`` enables the requirement checks. ``now`` (epoch seconds)
    enables the expiry check of trust metadata: an expired store refuses every bundle.

    Raises:
        BundleError: a specific subclass for each reason of refusal (see device_agent.errors).
    """
    if now is not None and trust.expired(now):
        raise TrustExpiredError(f"trust metadata version {trust.version} expired; a newer version is needed")
    archive = Archive(data, limits)
    manifest_bytes, signatures = _signed_parts(archive)
    signed_by = sigs.verify(manifest_bytes, signatures, trust)
    manifest = Manifest.from_json(manifest_bytes)
    floor = (highest_sequence or {}).get(manifest.name)
    if floor is not None and manifest.sequence <= floor:
        raise DowngradeError(
            f"{manifest.name} sequence {manifest.sequence} is not above the committed sequence {floor}"
        )
    if device is not None:
        check_requirements(manifest, device)
    _check_file_set(archive, manifest)
    _check_hashes(archive, manifest)
    return Bundle(manifest, manifest_bytes, tuple(signatures), tuple(signed_by), archive)


def _signed_parts(archive: Archive) -> tuple[bytes, list[sigs.Signature]]:
    if MANIFEST_NAME not in archive.entries:
        raise BundleFormatError("bundle has no manifest.json")
    if SIGNATURE_NAME not in archive.entries:
        raise MissingSignatureError("bundle has no manifest.sig")
    manifest_bytes = archive.read(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    signatures = sigs.decode(archive.read(SIGNATURE_NAME, sigs.MAX_SIG_BYTES))
    return manifest_bytes, signatures


def _check_file_set(archive: Archive, manifest: Manifest) -> None:
    listed = {e.path for e in manifest.all_files()}
    present = set(archive.entries) - {MANIFEST_NAME, SIGNATURE_NAME}
    if extra := sorted(present - listed):
        raise UnexpectedFileError(f"bundle holds file(s) not in the manifest: {', '.join(extra)[:300]}")
    if missing := sorted(listed - present):
        raise MissingFileError(f"manifest lists file(s) the bundle lacks: {', '.join(missing)[:300]}")


def _check_hashes(archive: Archive, manifest: Manifest) -> None:
    for entry in manifest.all_files():
        if archive.entries[entry.path].file_size != entry.size:
            raise SizeMismatchError(
                f"{entry.path} is {archive.entries[entry.path].file_size} bytes, manifest says {entry.size}"
            )
        size, digest = archive.digest(entry.path)
        if size != entry.size:
            raise SizeMismatchError(f"{entry.path} is {size} bytes, manifest says {entry.size}")
        if digest != entry.sha256:
            raise HashMismatchError(f"{entry.path} sha256 is {digest[:16]}…, manifest says {entry.sha256[:16]}…")


def check_requirements(manifest: Manifest, device: DeviceCapabilities) -> None:
    """Refuse a bundle whose runtime or resource requirements the device cannot meet.

    Raises:
        RequirementError: naming the first unmet requirement, with the numbers.
    """
    rt = manifest.runtime
    req = manifest.requirements
    installed = device.runtimes.get(rt.name)
    if device.runtimes and installed is None:
        raise RequirementError(f"runtime {rt.name} is not available on this device")
    if installed is not None and not at_least(installed, rt.min_version):
        raise RequirementError(f"runtime {rt.name} {installed} is older than the required {rt.min_version}")
    if device.agent_version and not at_least(device.agent_version, req.min_agent_version):
        raise RequirementError(f"agent {device.agent_version} is older than the required {req.min_agent_version}")
    if device.arch and req.architectures and device.arch not in req.architectures:
        raise RequirementError(f"architecture {device.arch} is not one of {', '.join(req.architectures)}")
    if device.ram_bytes is not None and req.ram_bytes > device.ram_bytes:
        raise RequirementError(f"needs {req.ram_bytes} bytes of RAM, device has {device.ram_bytes}")
    if device.flash_free_bytes is not None and req.flash_bytes > device.flash_free_bytes:
        raise RequirementError(f"needs {req.flash_bytes} bytes of storage, device has {device.flash_free_bytes} free")
