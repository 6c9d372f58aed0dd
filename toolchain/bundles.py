"""Signed bundles on the engineer's host: read one, verify it as a device would, summarise it for people.

The bundle format itself (reader, writer, signatures) is ``device_agent.bundle``; this adds what
``edgetool sign``, ``verify`` and ``inspect`` need around it.
"""

from __future__ import annotations

import time
from pathlib import Path

from device_agent.bundle import Bundle, Manifest, TensorInfo, TrustStore, read_bundle, verify_bundle
from toolchain.errors import InputError


def read_file(path: str | Path) -> bytes:
    """The bytes of ``path``.

    Raises:
        InputError: the file cannot be read.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


def verify(data: bytes, store: TrustStore, committed_sequence: int | None = None) -> Bundle:
    """Verify bundle bytes as a device would, with ``committed_sequence`` as its anti-rollback floor.

    Raises:
        BundleError: the subclass names why a device would refuse the bundle.
    """
    floor = None
    if committed_sequence is not None:
        floor = {read_bundle(data, check_hashes=False).manifest.name: committed_sequence}
    return verify_bundle(data, store, highest_sequence=floor, now=time.time())


def _tensor_line(t: TensorInfo) -> str:
    q = f" q(scale={t.quantization.scale[0]:.4g}, zp={t.quantization.zero_point[0]})" if t.quantization else ""
    return f"{t.name} {t.dtype}{list(t.shape)}{q}"


def _selftest_line(m: Manifest) -> str:
    if m.selftest is None:
        return "none"
    line = f"{m.selftest.path} atol={m.selftest.atol:.3g} rtol={m.selftest.rtol:.3g}"
    c = m.selftest.compact
    if c is not None:
        line += f", compact: {c.samples} {c.inputs} input sample(s), {c.elements} elements drawn per output"
    return line


def summary(bundle: Bundle, size: int | None = None) -> list[tuple[str, str]]:
    """(label, value) rows describing ``bundle``: model, tensors, requirements, files, signatures, tools."""
    m = bundle.manifest
    sigs = ", ".join(s.keyid + (" ✓" if s.keyid in bundle.signed_by else "") for s in bundle.signatures)
    req = m.requirements
    arch = f", arch {'/'.join(req.architectures)}" if req.architectures else ""
    rows = [
        ("bundle", f"{m.name} {m.version} (sequence {m.sequence}, {m.format})"),
        ("runtime", f"{m.runtime.name} >= {m.runtime.min_version}"),
        ("model", f"{m.model.path} {m.model.size} bytes sha256 {m.model.sha256}"),
        *[("input", _tensor_line(t)) for t in m.inputs],
        *[("output", _tensor_line(t)) for t in m.outputs],
        ("postprocess", m.postprocess.kind + (f" ({m.postprocess.labels})" if m.postprocess.labels else "")),
        ("requires", f"RAM {req.ram_bytes} B, flash {req.flash_bytes} B, agent >= {req.min_agent_version}{arch}"),
        ("selftest", _selftest_line(m)),
        ("drift", m.drift or "none"),
        ("files", ", ".join(f"{e.path} ({e.size} B)" for e in m.files) or "none"),
        ("signatures", sigs + ("" if bundle.signed_by else " (not verified: pass --trust)")),
    ]
    if size is not None:
        rows.insert(1, ("size", f"{size} bytes"))
    tools = m.provenance.get("tools")
    if isinstance(tools, dict):
        rows.append(("built with", ", ".join(f"{k} {v}" for k, v in sorted(tools.items()))))
    return rows
