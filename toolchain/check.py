"""``edgetool check``: does a bundle or model fit a device profile? With the numbers.

Checks: runtime kind and version, bytes against the flash budget, peak memory (the RSS high-water
mark of a child process running the model in the device runtime, or the bundle's declared RAM,
whichever is larger) against the RAM budget, host latency p95 scaled by the profile's factor
against the latency budget, and the model's operators.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device_agent._version import at_least
from device_agent.bundle import read_bundle
from toolchain.measure import measure
from toolchain.profiles import Profile
from toolchain.sources import ModelKind, model_kind


@dataclass(frozen=True)
class CheckRow:
    check: str
    value: str
    limit: str
    ok: bool


@dataclass
class CheckResult:
    target: str
    profile: str
    rows: list[CheckRow] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return all(r.ok for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}


def check(target: Path, profile: Profile, runs: int = 30) -> CheckResult:
    """Check ``target`` (.efb bundle, .tflite, .onnx, or a Keras/SavedModel/.pt2 source, converted to the
    profile's runtime first) against ``profile``.

    Raises:
        BundleError: a damaged bundle.
        ModelError: a target that is neither a bundle nor a runnable model.
        MeasureError, RuntimeLoadError: the model cannot run on this host.
    """
    with tempfile.TemporaryDirectory(prefix="edgetool-check-") as tmp:
        if target.suffix == ".efb":
            model, kind, min_version, declared_ram, stored = _from_bundle(target, Path(tmp))
        else:
            model, kind = _runnable(target, profile, Path(tmp))
            min_version, declared_ram, stored = None, 0, model.stat().st_size
        m = measure(kind.value, model, runs)
        ops = list_ops(kind, model)
    device_ms = m.p95_ms * profile.latency_factor
    ram = max(m.peak_rss_bytes, declared_ram)
    result = CheckResult(str(target), profile.name, ops=ops)
    result.numbers = {
        "bytes": stored,
        "peak_rss_bytes": m.peak_rss_bytes,
        "declared_ram_bytes": declared_ram,
        "host_p50_ms": m.p50_ms,
        "host_p95_ms": m.p95_ms,
        "device_p95_ms_estimate": device_ms,
    }
    version_ok = min_version is None or at_least(profile.runtime_version, min_version)
    result.rows = [
        CheckRow("runtime", kind.value, profile.runtime, kind.value == profile.runtime),
        CheckRow("runtime version", f">= {min_version}" if min_version else "any", profile.runtime_version, version_ok),
        CheckRow("flash", _mib(stored), _mib(profile.flash_bytes), stored <= profile.flash_bytes),
        CheckRow("peak memory", _mib(ram), _mib(profile.ram_bytes), ram <= profile.ram_bytes),
        CheckRow(
            "latency p95",
            f"{device_ms:.2f} ms (host {m.p95_ms:.3f} ms × {profile.latency_factor:g})",
            f"{profile.latency_budget_ms:g} ms",
            device_ms <= profile.latency_budget_ms,
        ),
    ]
    return result


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def _from_bundle(path: Path, tmp: Path) -> tuple[Path, ModelKind, str, int, int]:
    data = path.read_bytes()
    bundle = read_bundle(data)
    m = bundle.manifest
    model = tmp / Path(m.model.path).name
    model.write_bytes(bundle.read(m.model.path))
    flash = max(len(data), m.requirements.flash_bytes)
    return model, ModelKind(m.runtime.name), m.runtime.min_version, m.requirements.ram_bytes, flash


def _runnable(target: Path, profile: Profile, tmp: Path) -> tuple[Path, ModelKind]:
    """``target`` as a model the device runtime runs: itself (.tflite, .onnx), or a Keras, SavedModel
    or PyTorch source converted to the profile's runtime (float32, as ``edgetool convert`` would).

    Raises:
        ModelError, UnsupportedOpsError: the source cannot be converted.
    """
    kind = model_kind(target)
    if kind in (ModelKind.TFLITE, ModelKind.ONNX):
        return target, kind
    from toolchain.convert import convert

    return convert(target, profile.runtime, tmp / f"converted.{profile.runtime}").output, ModelKind(profile.runtime)


def list_ops(kind: ModelKind, model: Path) -> list[str]:
    """The distinct operator names in ``model`` (TFLite builtin codes or ONNX op types), sorted."""
    if kind is ModelKind.ONNX:
        import onnx

        graph = onnx.load(str(model)).graph
        return sorted({f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in graph.node})
    from ai_edge_litert import interpreter

    it = interpreter.Interpreter(model_path=str(model))
    return sorted({str(op["op_name"]) for op in it._get_ops_details()})
