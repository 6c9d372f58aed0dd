"""Assemble and sign bundles. Used by the toolchain; lives here so there is one format definition."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import device_agent.bundle.signatures as sigs
from device_agent.bundle.archive import Buffer, Limits, write_zip
from device_agent.bundle.keys import PrivateKey
from device_agent.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME, FileEntry, Manifest
from device_agent.bundle.reader import read_bundle
from device_agent.errors import ConfigError


def file_entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def build_bundle(manifest: Manifest, contents: Mapping[str, bytes], keys: Iterable[PrivateKey]) -> bytes:
    """Pin every file of ``contents`` in the manifest, sign it with ``keys`` and write the ZIP.

    ``contents`` must hold ``manifest.model.path``; every other entry becomes one of ``files``.
    The same inputs always give the same bytes (Ed25519 signatures are deterministic).

    Raises:
        ConfigError: no signing key, or the model file is missing from ``contents``.
        ManifestError: the resulting manifest would not validate.
    """
    keys = list(keys)
    if not keys:
        raise ConfigError("a bundle needs at least one signing key")
    if manifest.model.path not in contents:
        raise ConfigError(f"contents lack the model file {manifest.model.path}")
    model = file_entry(manifest.model.path, contents[manifest.model.path])
    others = tuple(file_entry(p, contents[p]) for p in sorted(contents) if p != manifest.model.path)
    manifest = manifest.with_files(model, others)
    manifest_bytes = manifest.to_bytes()
    return _assemble(manifest_bytes, sigs.sign(manifest_bytes, keys), contents)


def add_signatures(data: Buffer, keys: Iterable[PrivateKey], *, limits: Limits | None = None) -> bytes:
    """Return the bundle with signatures by ``keys`` added (existing ones kept; one per key).

    Raises:
        BundleError: the input bundle is malformed (its hashes are checked before co-signing).
    """
    bundle = read_bundle(data, limits=limits)
    new = sigs.sign(bundle.manifest_bytes, keys)
    return _assemble(bundle.manifest_bytes, [*bundle.signatures, *new], bundle.files)


def _assemble(manifest_bytes: bytes, signatures: list[sigs.Signature], contents: Mapping[str, bytes]) -> bytes:
    entries = dict(contents)
    entries[MANIFEST_NAME] = manifest_bytes
    entries[SIGNATURE_NAME] = sigs.encode(signatures)
    return write_zip(entries)
