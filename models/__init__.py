"""Reference model recipes: deterministic, offline, small. ``python -m models build NAME --out DIR``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

RECIPES: dict[str, str] = {
    "tiny-digits": "models.tiny:build",
    "digits-cnn": "models.digits_cnn:build",
    "digits-outlier": "models.outlier:build",
    "kws-cnn": "models.kws:build",
    "mobilenet-96": "models.mobilenet:build",
}


def build(name: str, out: Path) -> dict[str, Path]:
    """Build recipe ``name`` into ``out``; returns the written files by role."""
    import importlib

    if name not in RECIPES:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(RECIPES))}")
    module, func = RECIPES[name].split(":")
    fn: Callable[[Path], dict[str, Path]] = getattr(importlib.import_module(module), func)
    out.mkdir(parents=True, exist_ok=True)
    return fn(out)
