"""Command lines for tests, written as Python calls instead of one word per line.

``argv("serve", db=url, broker_username="fleetctl", tls=True)`` gives
``["serve", "--db", url, "--broker-username", "fleetctl", "--tls"]``: positional words first, then
one ``--name value`` per keyword in the order given (underscores become dashes, ``True`` is a bare
flag, ``None`` and ``False`` are left out).
"""

from __future__ import annotations

from pathlib import Path


def argv(*words: str | Path, **options: object) -> list[str]:
    out = [str(w) for w in words]
    for name, value in options.items():
        if value is None or value is False:
            continue
        out.append("--" + name.replace("_", "-"))
        if value is not True:
            out.append(str(value))
    return out
