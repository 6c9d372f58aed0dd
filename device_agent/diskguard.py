"""Full disks, seen before and during the work: the free-space check and the translation of I/O errors.

A device nobody can walk up to must degrade, never die: an update refuses to start when the home's
filesystem cannot hold the download (plus a margin), and an ``OSError`` met
under a step becomes a ``StorageError`` (``no-space`` for ENOSPC/EDQUOT, else ``io``) that the
updater turns into a terminal deployment state with that reason.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from device_agent.errors import NoSpaceError, StorageError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def free_bytes(root: Path) -> int:
    """Bytes an unprivileged writer may still use on ``root``'s filesystem (0 when it cannot be read)."""
    try:
        return shutil.disk_usage(root).free
    except OSError:
        return 0


def update_space_needed(size: int, have: int, margin: int) -> int:
    """Bytes an update of a ``size``-byte bundle still needs, ``have`` bytes of it being downloaded:
    the rest of the download (installed by renaming it into the slot: no second copy) and ``margin``
    for state.json, the spool and the filesystem's own overhead."""
    return max(0, size - have) + margin


def check_space(root: Path, needed: int, what: str) -> None:
    """Raises: NoSpaceError if ``root``'s filesystem has fewer than ``needed`` free bytes."""
    free = free_bytes(root)
    if free < needed:
        raise NoSpaceError(f"{what} needs {needed} bytes, {free} free in {root}", needed=needed, free=free)


def storage_error(exc: OSError, root: Path, what: str) -> StorageError:
    """The ``StorageError`` an ``OSError`` met while doing ``what`` stands for (the message names no file content)."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in NO_SPACE_ERRNOS:
        free = free_bytes(root)
        return NoSpaceError(f"{what}: {reason} ({free} bytes free in {root})", free=free)
    return StorageError(f"{what}: {reason}")


def is_no_space(exc: OSError) -> bool:
    return exc.errno in NO_SPACE_ERRNOS
