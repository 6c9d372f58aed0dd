"""The bundle manifest: typed, immutable dataclasses with schema validation and canonical JSON.

``Manifest.from_json(bytes)`` is the only way untrusted manifest bytes become an object, and it
either returns a fully validated ``Manifest`` or raises ``ManifestError`` naming the bad field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from device_agent._json import Fields, JsonObject, canonical_json, drop_none, loads_strict
from device_agent.errors import ManifestError, UnsupportedFormatError

FORMAT = "edgefleet-bundle/1"
COMPACT_FORMAT = "edgefleet-bundle/2"  # /1 plus the compact self-test (docs/bundle-format.md)
FORMATS = (FORMAT, COMPACT_FORMAT)
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MAX_MANIFEST_BYTES = 1 << 20  # bytes; a manifest is a few KiB, drift histograms included

RUNTIMES = ("tflite", "onnx")
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64", "bool")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
SHA256_RE = re.compile(r"[0-9a-f]{64}")
# A relative POSIX path of plain segments; '..' and '.' segments are refused separately below.
PATH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,127}){0,7}")
ARCH_RE = re.compile(r"[a-z0-9_]{1,32}")


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle, pinned by size and SHA-256."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> JsonObject:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def parse(cls, f: Fields) -> FileEntry:
        path = f.string("path", pattern=PATH_RE, max_len=512)
        if any(part in (".", "..") for part in path.split("/")):
            f.fail("path", f"{path!r} has a '.' or '..' segment")
        if path in (MANIFEST_NAME, SIGNATURE_NAME):
            f.fail("path", f"{path!r} is reserved")
        return cls(path=path, size=f.integer("size", lo=0, hi=1 << 40), sha256=f.string("sha256", pattern=SHA256_RE))


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: real = scale * (q - zero_point), per tensor or per axis."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    def to_dict(self) -> JsonObject:
        return {"scale": list(self.scale), "zero_point": list(self.zero_point), "axis": self.axis}

    @classmethod
    def parse(cls, f: Fields) -> Quantization:
        scale = tuple(f.numbers("scale", max_items=4096))
        zero_point = tuple(f.integers("zero_point", max_items=4096))
        if not scale or len(scale) != len(zero_point):
            f.fail("scale", "must be non-empty and as long as zero_point")
        return cls(scale=scale, zero_point=zero_point, axis=f.opt_integer("axis", lo=0, hi=16) or 0)


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output: name, element type, shape (-1 for a dynamic dimension)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    quantization: Quantization | None = None

    def to_dict(self) -> JsonObject:
        q = self.quantization.to_dict() if self.quantization else None
        return drop_none({"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "quantization": q})

    @classmethod
    def parse(cls, f: Fields) -> TensorInfo:
        shape = []
        for i, raw in enumerate(f.array("shape", max_items=16)):
            dim = -1 if raw is None else raw
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < -1:
                f.fail(f"shape[{i}]", "must be a non-negative integer, -1 or null")
            shape.append(dim)
        q = f.opt_child("quantization")
        return cls(
            name=f.string("name", max_len=256),
            dtype=f.enum("dtype", DTYPES),
            shape=tuple(shape),
            quantization=Quantization.parse(q) if q else None,
        )


@dataclass(frozen=True)
class RuntimeSpec:
    """Which inference runtime runs the model, and the oldest version known to run it."""

    name: str
    min_version: str = "0.0.0"

    def to_dict(self) -> JsonObject:
        return {"name": self.name, "min_version": self.min_version}

    @classmethod
    def parse(cls, f: Fields) -> RuntimeSpec:
        return cls(name=f.enum("name", RUNTIMES), min_version=f.string("min_version", pattern=SEMVER_RE))


@dataclass(frozen=True)
class Requirements:
    """What a device must offer to run the bundle."""

    ram_bytes: int = 0
    flash_bytes: int = 0
    min_agent_version: str = "0.0.0"
    architectures: tuple[str, ...] = ()  # empty: any

    def to_dict(self) -> JsonObject:
        return {
            "ram_bytes": self.ram_bytes,
            "flash_bytes": self.flash_bytes,
            "min_agent_version": self.min_agent_version,
            "architectures": list(self.architectures),
        }

    @classmethod
    def parse(cls, f: Fields) -> Requirements:
        archs = f.strings("architectures", max_items=16, max_len=32)
        for a in archs:
            if not ARCH_RE.fullmatch(a):
                f.fail("architectures", f"{a!r} is not an architecture name")
        return cls(
            ram_bytes=f.integer("ram_bytes", lo=0, hi=1 << 44),
            flash_bytes=f.integer("flash_bytes", lo=0, hi=1 << 44),
            min_agent_version=f.string("min_agent_version", pattern=SEMVER_RE),
            architectures=tuple(archs),
        )


@dataclass(frozen=True)
class Postprocess:
    """How to read the outputs: ``classification`` (argmax over ``output``, optional labels) or ``none``."""

    kind: str = "none"
    output: str | None = None
    labels: str | None = None  # path of a labels file inside the bundle

    def to_dict(self) -> JsonObject:
        return drop_none({"kind": self.kind, "output": self.output, "labels": self.labels})

    @classmethod
    def parse(cls, f: Fields) -> Postprocess:
        return cls(
            kind=f.enum("kind", ("none", "classification", "regression")),
            output=f.opt_string("output"),
            labels=f.opt_string("labels", pattern=PATH_RE, max_len=512),
        )


@dataclass(frozen=True)
class CompactSelfTest:
    """How a compact self-test (``edgefleet-bundle/2``) was made: ``samples`` inputs, either real ones
    coded as uint8 in the file (``coded``) or generated on the device from ``seed`` uniformly within
    ``ranges`` (``generated``), and ``elements`` output elements drawn per output from ``seed``."""

    samples: int
    seed: int
    elements: int
    inputs: str = "coded"  # coded | generated
    ranges: tuple[tuple[float, float], ...] = ()  # generated: [lo, hi] per input, manifest order

    def to_dict(self) -> JsonObject:
        return drop_none(
            {
                "samples": self.samples,
                "seed": self.seed,
                "elements": self.elements,
                "inputs": self.inputs,
                "ranges": [list(r) for r in self.ranges] if self.ranges else None,
            }
        )

    @classmethod
    def parse(cls, f: Fields) -> CompactSelfTest:
        ranges = []
        for i, pair in enumerate(f.array("ranges", max_items=64, optional=True)):
            ok = isinstance(pair, list) and len(pair) == 2
            ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
            if not ok or pair[0] > pair[1]:
                f.fail(f"ranges[{i}]", "must be a pair [lo, hi] of finite numbers with lo <= hi")
            ranges.append((float(pair[0]), float(pair[1])))
        inputs = f.enum("inputs", ("coded", "generated"))
        if inputs == "generated" and not ranges:
            f.fail("ranges", "is required for generated inputs")
        return cls(
            samples=f.integer("samples", lo=1, hi=1024),
            seed=f.integer("seed", lo=0, hi=(1 << 63) - 1),
            elements=f.integer("elements", lo=1, hi=1 << 24),
            inputs=inputs,
            ranges=tuple(ranges),
        )


@dataclass(frozen=True)
class SelfTest:
    """Reference inputs and outputs (an .npz in the bundle) and how closely a device must match them.

    ``compact`` is set when the file holds the compact form (device_agent/selftest.py), else it holds
    the whole reference inputs and outputs."""

    path: str
    atol: float = 1e-3
    rtol: float = 1e-3
    min_top1_agreement: float = 1.0
    compact: CompactSelfTest | None = None

    def to_dict(self) -> JsonObject:
        return drop_none(
            {
                "path": self.path,
                "atol": self.atol,
                "rtol": self.rtol,
                "min_top1_agreement": self.min_top1_agreement,
                "compact": self.compact.to_dict() if self.compact else None,
            }
        )

    @classmethod
    def parse(cls, f: Fields) -> SelfTest:
        compact = f.opt_child("compact")
        return cls(
            path=f.string("path", pattern=PATH_RE, max_len=512),
            atol=f.number("atol", lo=0.0),
            rtol=f.number("rtol", lo=0.0),
            min_top1_agreement=f.number("min_top1_agreement", lo=0.0, hi=1.0),
            compact=CompactSelfTest.parse(compact) if compact else None,
        )


@dataclass(frozen=True)
class Manifest:
    """A validated bundle manifest. Build one, then ``to_bytes()`` gives its canonical JSON."""

    name: str
    version: str
    sequence: int
    runtime: RuntimeSpec
    model: FileEntry
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    files: tuple[FileEntry, ...] = ()
    postprocess: Postprocess = field(default_factory=Postprocess)
    requirements: Requirements = field(default_factory=Requirements)
    selftest: SelfTest | None = None
    drift: str | None = None  # path of drift.json inside the bundle
    provenance: JsonObject = field(default_factory=dict)
    description: str = ""
    format: str = FORMAT

    def all_files(self) -> tuple[FileEntry, ...]:
        """The model and every other file, in manifest order."""
        return (self.model, *self.files)

    def file(self, path: str) -> FileEntry:
        for entry in self.all_files():
            if entry.path == path:
                return entry
        raise KeyError(path)

    def with_files(self, model: FileEntry, files: tuple[FileEntry, ...]) -> Manifest:
        return replace(self, model=model, files=files)

    def to_dict(self) -> JsonObject:
        return drop_none(
            {
                "format": self.format,
                "name": self.name,
                "version": self.version,
                "sequence": self.sequence,
                "description": self.description or None,
                "runtime": self.runtime.to_dict(),
                "model": self.model.to_dict(),
                "files": [f.to_dict() for f in self.files],
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs],
                "postprocess": self.postprocess.to_dict(),
                "requirements": self.requirements.to_dict(),
                "selftest": self.selftest.to_dict() if self.selftest else None,
                "drift": {"path": self.drift} if self.drift else None,
                "provenance": self.provenance,
            }
        )

    def to_bytes(self) -> bytes:
        """The canonical JSON that is signed and stored as ``manifest.json``."""
        data = canonical_json(self.to_dict())
        Manifest.from_dict(self.to_dict())  # never write what a reader would refuse
        return data

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and validate manifest bytes.

        Raises:
            ManifestError: malformed JSON or a field that fails the schema.
            UnsupportedFormatError: a ``format`` this reader does not implement.
        """
        obj = loads_strict(data, max_bytes=MAX_MANIFEST_BYTES, error=ManifestError, what="manifest.json")
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Any) -> Manifest:
        f = Fields(obj, "manifest", ManifestError)
        fmt = f.string("format", max_len=64)
        if fmt not in FORMATS:
            known = ", ".join(FORMATS)
            raise UnsupportedFormatError(f"bundle format {fmt[:64]!r} is not supported (this reader knows {known})")
        selftest = f.opt_child("selftest")
        drift = f.opt_child("drift")
        manifest = cls(
            format=fmt,
            name=f.string("name", pattern=NAME_RE),
            version=f.string("version", pattern=SEMVER_RE, max_len=128),
            sequence=f.integer("sequence", lo=1, hi=(1 << 63) - 1),
            description=f.opt_string("description", max_len=4096) or "",
            runtime=RuntimeSpec.parse(f.child("runtime")),
            model=FileEntry.parse(f.child("model")),
            files=tuple(FileEntry.parse(x) for x in f.children("files", max_items=64, optional=True)),
            inputs=tuple(TensorInfo.parse(x) for x in f.children("inputs", max_items=64)),
            outputs=tuple(TensorInfo.parse(x) for x in f.children("outputs", max_items=64)),
            postprocess=Postprocess.parse(f.child("postprocess")) if f.has("postprocess") else Postprocess(),
            requirements=Requirements.parse(f.child("requirements")) if f.has("requirements") else Requirements(),
            selftest=SelfTest.parse(selftest) if selftest else None,
            drift=drift.string("path", pattern=PATH_RE, max_len=512) if drift else None,
            provenance=f.raw_obj("provenance"),
        )
        manifest._check_references()
        return manifest

    def _check_references(self) -> None:
        paths = [e.path for e in self.all_files()]
        if len(set(paths)) != len(paths):
            raise ManifestError("manifest lists a file path twice")
        if not self.inputs or not self.outputs:
            raise ManifestError("manifest must declare at least one input and one output")
        compact = self.selftest.compact if self.selftest else None
        if (compact is not None) != (self.format == COMPACT_FORMAT):
            raise ManifestError(f"manifest.selftest.compact goes with format {COMPACT_FORMAT} and only with it")
        if compact is not None and compact.inputs == "generated" and len(compact.ranges) != len(self.inputs):
            raise ManifestError("manifest.selftest.compact.ranges needs one [lo, hi] per input")
        for what, path in (
            ("selftest.path", self.selftest.path if self.selftest else None),
            ("drift.path", self.drift),
            ("postprocess.labels", self.postprocess.labels),
        ):
            if path is not None and path not in paths:
                raise ManifestError(f"manifest.{what} names {path!r}, which is not in manifest.files")
        out_names = {t.name for t in self.outputs}
        if self.postprocess.output is not None and self.postprocess.output not in out_names:
            raise ManifestError(f"manifest.postprocess.output {self.postprocess.output!r} is not an output")
