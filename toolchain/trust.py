"""Writing trust metadata on the engineer's host: the first version, and each next version as an
edit of the previous one (``edgetool trust init/update``). Reading and verifying it is the device's
code (``device_agent.bundle.trust``); every version written here is verified with it before it is
returned, so a version the devices would refuse is never written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from device_agent.bundle import PrivateKey, PublicKey
from device_agent.bundle.trust import Role, TrustMetadata, verify_initial, verify_next
from device_agent.errors import KeyFileError
from toolchain.errors import InputError

DURATION_RE = re.compile(r"(\d{1,5})([dh])")
DATE_RE = re.compile(r"\d{4}-\d\d-\d\d")


class TrustEditError(InputError):
    """A trust init/update request is inconsistent (threshold over the keys, unknown key to remove...)."""

    code = "trust-edit"


def parse_expiry(text: str, now: float) -> int:
    """``365d``, ``12h``, or a UTC date ``2027-06-30`` to epoch seconds.

    Raises:
        TrustEditError: another form, or a time not in the future.
    """
    if m := DURATION_RE.fullmatch(text):
        seconds = int(m.group(1)) * (86400 if m.group(2) == "d" else 3600)
        return int(now) + seconds
    if DATE_RE.fullmatch(text):
        epoch = int(time.mktime(time.strptime(text, "%Y-%m-%d")) - time.timezone)
        if epoch <= now:
            raise TrustEditError(f"--expires {text} is not in the future")
        return epoch
    raise TrustEditError(f"--expires {text!r} must be like 365d, 12h or 2027-06-30")


def key_or_id(text: str) -> str:
    """A key id given directly (16 hex digits), or the id of a public key file.

    Raises:
        TrustEditError: neither.
    """
    if re.fullmatch(r"[0-9a-f]{16}", text):
        return text
    try:
        return PublicKey.load(text).keyid
    except KeyFileError as exc:
        raise TrustEditError(f"{text} is neither a key id nor a public key file: {exc}") from None


def _role(keys: Sequence[PublicKey], threshold: int, what: str) -> Role:
    role = Role.of(keys, threshold)
    if not role.keys:
        raise TrustEditError(f"{what}: at least one key is required")
    if threshold > len(role.keys):
        raise TrustEditError(f"{what} threshold {threshold} exceeds the {len(role.keys)} key(s)")
    return role


def init(
    root_keys: Sequence[PrivateKey],
    root_threshold: int,
    release: Sequence[PublicKey],
    release_threshold: int,
    expires: int,
) -> bytes:
    """Version 1, signed by every given root key.

    Raises:
        TrustEditError: a threshold over its keys; TrustError: the result would not verify.
    """
    meta = TrustMetadata(
        version=1,
        expires=expires,
        root=_role([k.public_key for k in root_keys], root_threshold, "root"),
        release=_role(release, release_threshold, "release"),
    )
    data = meta.sign(root_keys).to_bytes()
    verify_initial(data)
    return data


@dataclass(frozen=True)
class TrustEdit:
    """What ``edgetool trust update`` changes; fields left empty/None keep the previous version's."""

    add_release: tuple[PublicKey, ...] = ()
    revoke_release: tuple[str, ...] = ()  # key ids
    add_root: tuple[PublicKey, ...] = ()
    remove_root: tuple[str, ...] = ()  # key ids
    release_threshold: int | None = None
    root_threshold: int | None = None
    expires: int | None = None


def update(previous: TrustMetadata, edit: TrustEdit, signers: Sequence[PrivateKey]) -> tuple[TrustMetadata, bytes]:
    """The next version: ``previous`` with ``edit`` applied, signed by ``signers``.

    Raises:
        TrustEditError: an inconsistent edit (unknown key to revoke/remove, threshold over the keys).
        TrustSignatureError: ``signers`` do not reach the previous or the new root threshold.
    """
    release = _edit_keys(previous.release.keys, edit.add_release, edit.revoke_release, "revoke")
    if revived := sorted(set(release) & previous.revoked):
        raise TrustEditError(f"key {revived[0]} was revoked; a revoked key cannot be trusted again")
    root = _edit_keys(previous.root.keys, edit.add_root, edit.remove_root, "remove")
    meta = replace(
        previous,
        version=previous.version + 1,
        expires=edit.expires or previous.expires,
        root=_role(list(root.values()), edit.root_threshold or previous.root.threshold, "root"),
        release=_role(list(release.values()), edit.release_threshold or previous.release.threshold, "release"),
        revoked=previous.revoked | set(edit.revoke_release),
        signatures=(),
    ).sign(signers)
    data = meta.to_bytes()
    return verify_next(previous, data), data


def _edit_keys(
    keys: Mapping[str, PublicKey], add: Sequence[PublicKey], drop: Sequence[str], verb: str
) -> dict[str, PublicKey]:
    out = dict(keys)
    for kid in drop:
        if kid not in out:
            raise TrustEditError(f"cannot {verb} key {kid}: it is not in the previous version")
        del out[kid]
    out.update({k.keyid: k for k in add})
    return out
