"""``edgetool trust init/update/show``: the signed trust metadata devices and the fleet verify bundles with."""

from __future__ import annotations

import time
from pathlib import Path

import click

from device_agent.bundle import PublicKey
from device_agent.bundle.trust import TrustMetadata, describe, verify_initial
from device_agent.fsutil import atomic_write
from toolchain import trust as T
from toolchain.cli.common import echo_json, load_keys

KEY = click.Path(exists=True, dir_okay=False)
OUT = click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write."
)
EXPIRES_HELP = "Expiry: 365d, 12h or a UTC date 2027-06-30. Devices refuse new bundles once it passes."


@click.group()
def trust() -> None:
    """Signed trust metadata: root keys (offline) that sign trust versions, release keys that sign
    bundles, revocations and expiry. Root private keys may be encrypted: the passphrase comes from
    EDGEFLEET_KEY_PASSPHRASE or the file named by EDGEFLEET_KEY_PASSPHRASE_FILE."""


@trust.command()
@click.option("--root-key", "root_keys", required=True, multiple=True, type=KEY, help="Root private key (repeat).")
@click.option(
    "--root-threshold", default=1, show_default=True, type=click.IntRange(min=1), help="Root signatures needed."
)
@click.option("--release-key", "release_keys", required=True, multiple=True, type=KEY, help="Release .pub (repeat).")
@click.option(
    "--release-threshold", default=1, show_default=True, type=click.IntRange(min=1), help="Bundle signatures."
)
@click.option("--expires", default="365d", show_default=True, help=EXPIRES_HELP)
@OUT
def init(
    root_keys: tuple[str, ...],
    root_threshold: int,
    release_keys: tuple[str, ...],
    release_threshold: int,
    expires: str,
    output: Path,
) -> None:
    """Write version 1 of the trust metadata, signed by every --root-key."""
    if output.exists():
        raise click.ClickException(f"{output} already exists; refusing to overwrite trust metadata [config]")
    data = T.init(
        load_keys(root_keys),
        root_threshold,
        [PublicKey.load(p) for p in release_keys],
        release_threshold,
        T.parse_expiry(expires, time.time()),
    )
    atomic_write(output, data)
    _echo_written(output, TrustMetadata.parse(data))


@trust.command()
@click.argument("previous", type=KEY)
@click.option("--add-release-key", multiple=True, type=KEY, help="Release .pub to add (repeat).")
@click.option("--revoke-release-key", multiple=True, help="Release .pub or key id to revoke for good (repeat).")
@click.option("--add-root-key", multiple=True, type=KEY, help="Root .pub to add (repeat); it must sign too.")
@click.option("--remove-root-key", multiple=True, help="Root .pub or key id to remove (repeat).")
@click.option("--release-threshold", type=click.IntRange(min=1), help="New release threshold.")
@click.option("--root-threshold", type=click.IntRange(min=1), help="New root threshold.")
@click.option("--expires", help=EXPIRES_HELP + " Default: keep the previous expiry.")
@click.option("--sign-with", required=True, multiple=True, type=KEY, help="Root private key (repeat).")
@OUT
def update(
    previous: str,
    add_release_key: tuple[str, ...],
    revoke_release_key: tuple[str, ...],
    add_root_key: tuple[str, ...],
    remove_root_key: tuple[str, ...],
    release_threshold: int | None,
    root_threshold: int | None,
    expires: str | None,
    sign_with: tuple[str, ...],
    output: Path,
) -> None:
    """Write the next version of PREVIOUS with the given changes.

    It must be signed (--sign-with) by the threshold of PREVIOUS's root keys and by the threshold of
    the new version's own root keys; it is verified as a device would before it is written.
    """
    held = verify_initial(Path(previous).read_bytes())
    change = T.TrustEdit(
        add_release=tuple(PublicKey.load(p) for p in add_release_key),
        revoke_release=tuple(T.key_or_id(k) for k in revoke_release_key),
        add_root=tuple(PublicKey.load(p) for p in add_root_key),
        remove_root=tuple(T.key_or_id(k) for k in remove_root_key),
        release_threshold=release_threshold,
        root_threshold=root_threshold,
        expires=T.parse_expiry(expires, time.time()) if expires else None,
    )
    meta, data = T.update(held, change, load_keys(sign_with))
    atomic_write(output, data)
    _echo_written(output, meta)


@trust.command()
@click.argument("file", type=KEY)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def show(file: str, as_json: bool) -> None:
    """Show a trust document: version, expiry, root and release keys with thresholds, revocations.

    Its signatures are checked against its own root keys (a chain needs `trust update`'s checks).
    """
    doc = describe(verify_initial(Path(file).read_bytes()), time.time())
    if as_json:
        echo_json(doc)
        return
    for label in ("version", "expires", "expired", "root_threshold", "release_threshold"):
        click.echo(f"{label:>17}  {doc[label]}")
    for label in ("root_keys", "release_keys", "revoked", "signed_by"):
        click.echo(f"{label:>17}  {', '.join(doc[label]) or '-'}")


def _echo_written(output: Path, meta: TrustMetadata) -> None:
    release = ", ".join(sorted(meta.release.keys))
    click.echo(
        f"wrote {output}: trust version {meta.version}, root {meta.root.threshold}-of-{len(meta.root.keys)}, "
        f"release {meta.release.threshold}-of-{len(meta.release.keys)} ({release})"
    )


COMMANDS = [trust]
