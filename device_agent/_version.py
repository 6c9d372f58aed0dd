"""Version comparison without the ``packaging`` dependency (it is not on every device image).

Only the numeric release part matters for our checks (runtime and agent minimums), so
``"2.14.0rc1"`` compares as ``(2, 14, 0)``; that is deliberate and documented in docs/bundle-format.md.
"""

from __future__ import annotations

import re

_RELEASE = re.compile(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def release(version: str) -> tuple[int, int, int]:
    """``"1.31.1"`` → ``(1, 31, 1)``; anything unparsable counts as ``(0, 0, 0)``."""
    m = _RELEASE.match(version)
    if not m:
        return (0, 0, 0)
    major, minor, patch = (int(g) if g else 0 for g in m.groups())
    return (major, minor, patch)


def at_least(version: str, minimum: str) -> bool:
    return release(version) >= release(minimum)
