"""Helpers that build valid and deliberately malicious bundles for the refusal tests.

``forge`` writes ZIPs with the standard library directly (bypassing our safe writer), so that
each defect a reader must refuse can be produced exactly.
"""

from __future__ import annotations

import io
import json
import stat
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from device_agent._json import canonical_json
from device_agent.bundle import FileEntry, Manifest, PrivateKey, RuntimeSpec, TensorInfo, build_bundle, read_bundle
from device_agent.bundle import signatures as sigs
from device_agent.bundle.manifest import MANIFEST_NAME, SIGNATURE_NAME

MODEL = bytes(range(256)) * 64  # 16 KiB of stand-in model bytes; the reader never runs the model


def simple_manifest(name: str = "digits", version: str = "1.0.0", sequence: int = 5) -> Manifest:
    return Manifest(
        name=name,
        version=version,
        sequence=sequence,
        runtime=RuntimeSpec("tflite", "2.14.0"),
        model=FileEntry("model/model.tflite", 0, "0" * 64),
        inputs=(TensorInfo("image", "float32", (-1, 8, 8, 1)),),
        outputs=(TensorInfo("probs", "float32", (-1, 10)),),
    )


def simple_bundle(key: PrivateKey, **manifest_kw: Any) -> bytes:
    return build_bundle(simple_manifest(**manifest_kw), {"model/model.tflite": MODEL, "labels.txt": b"a\nb\n"}, [key])


@dataclass
class Entry:
    name: str
    data: bytes
    compress: int = zipfile.ZIP_STORED
    mode: int = stat.S_IFREG | 0o644


@dataclass
class Parts:
    """A bundle taken apart: manifest object (as a dict), signatures and file contents."""

    manifest: dict[str, Any]
    files: dict[str, bytes]
    signatures: list[sigs.Signature] = field(default_factory=list)

    @classmethod
    def of(cls, data: bytes) -> Parts:
        b = read_bundle(data)
        return cls(json.loads(b.manifest_bytes), b.files, list(b.signatures))


def forge(
    parts: Parts,
    *,
    sign_with: Iterable[PrivateKey] | None = None,
    manifest_bytes: bytes | None = None,
    extra: Iterable[Entry] = (),
    replace: Mapping[str, bytes] | None = None,
    drop: Iterable[str] = (),
    signatures_bytes: bytes | None = None,
) -> bytes:
    """Write a bundle ZIP from parts, re-signing the (possibly edited) manifest with ``sign_with``."""
    mbytes = manifest_bytes if manifest_bytes is not None else canonical_json(parts.manifest)
    signatures = sigs.sign(mbytes, sign_with) if sign_with is not None else parts.signatures
    entries = [Entry(MANIFEST_NAME, mbytes)]
    if signatures_bytes is not None or signatures:
        entries.append(
            Entry(SIGNATURE_NAME, signatures_bytes if signatures_bytes is not None else sigs.encode(signatures))
        )
    files = {**parts.files, **(replace or {})}
    entries += [Entry(p, d) for p, d in sorted(files.items()) if p not in set(drop)]
    entries += list(extra)
    return write_raw(entries)


def write_raw(entries: Iterable[Entry]) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w") as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": forging duplicates is the point
        for e in entries:
            info = zipfile.ZipInfo(e.name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = e.mode << 16
            info.compress_type = e.compress
            with zf.open(info, "w") as fh:  # zf.writestr warns on duplicates; open() lets us forge them
                fh.write(e.data)
    return out.getvalue()
