"""Device profiles as data: built-ins in ``toolchain/data/profiles.toml`` plus user TOML files.

A profile says what a class of device offers a model: architecture, runtime and its version, RAM
and flash budgets, a latency budget, threads, and a host→device latency factor. A user profile is
a TOML file with one table of the same keys (see docs/quantization.md).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from toolchain.errors import ProfileError

MIB = 1 << 20
RUNTIMES = ("tflite", "onnx")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    arch: str
    runtime: str  # tflite | onnx
    runtime_version: str  # what the device ships
    ram_bytes: int  # budget for the model's process
    flash_bytes: int  # budget for the bundle
    latency_budget_ms: float  # per inference, on the device
    threads: int
    latency_factor: float  # device latency ≈ host latency (single-threaded) × this

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_KEYS: dict[str, type | tuple[type, ...]] = {
    "description": str,
    "arch": str,
    "runtime": str,
    "runtime_version": str,
    "ram_mib": (int, float),
    "flash_mib": (int, float),
    "latency_budget_ms": (int, float),
    "threads": int,
    "latency_factor": (int, float),
}


def _parse(name: str, table: Any, source: str) -> Profile:
    if not isinstance(table, dict):
        raise ProfileError(f"{source}: [{name}] must be a table")
    missing = sorted(set(_KEYS) - set(table))
    unknown = sorted(set(table) - set(_KEYS))
    if missing or unknown:
        raise ProfileError(f"{source}: [{name}] missing keys {missing or 'none'}, unknown keys {unknown or 'none'}")
    for key, types in _KEYS.items():
        if not isinstance(table[key], types) or isinstance(table[key], bool):
            raise ProfileError(f"{source}: [{name}] {key} has the wrong type ({type(table[key]).__name__})")
    if table["runtime"] not in RUNTIMES:
        raise ProfileError(f"{source}: [{name}] runtime must be one of {', '.join(RUNTIMES)}")
    if min(table["ram_mib"], table["flash_mib"], table["latency_budget_ms"], table["latency_factor"]) <= 0:
        raise ProfileError(f"{source}: [{name}] budgets and latency_factor must be positive")
    return Profile(
        name=name,
        description=table["description"],
        arch=table["arch"],
        runtime=table["runtime"],
        runtime_version=table["runtime_version"],
        ram_bytes=int(table["ram_mib"] * MIB),
        flash_bytes=int(table["flash_mib"] * MIB),
        latency_budget_ms=float(table["latency_budget_ms"]),
        threads=int(table["threads"]),
        latency_factor=float(table["latency_factor"]),
    )


def parse_profiles(text: str, source: str) -> dict[str, Profile]:
    """Profiles from TOML text: one table per profile.

    Raises:
        ProfileError: invalid TOML, or a table with missing, unknown or mistyped keys.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source} is not valid TOML: {exc}") from None
    if not doc:
        raise ProfileError(f"{source} defines no profile")
    return {name: _parse(name, table, source) for name, table in doc.items()}


def builtin_profiles() -> dict[str, Profile]:
    text = resources.files("toolchain").joinpath("data/profiles.toml").read_text(encoding="utf-8")
    return parse_profiles(text, "built-in profiles")


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or the (single) profile in a user TOML file.

    Raises:
        ProfileError: an unknown name, an unreadable file, or a file with not exactly one profile.
    """
    builtins = builtin_profiles()
    if name_or_path in builtins:
        return builtins[name_or_path]
    path = Path(name_or_path)
    if path.suffix != ".toml":
        raise ProfileError(f"unknown profile {name_or_path!r}; built-ins: {', '.join(builtins)} (or a .toml file)")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror}") from None
    found = parse_profiles(text, str(path))
    if len(found) != 1:
        raise ProfileError(f"{path} defines {len(found)} profiles; a profile file holds exactly one")
    return next(iter(found.values()))
