"""``edgetool keygen``, ``sign``, ``verify`` and ``inspect``: release keys and the signatures on bundles."""

from __future__ import annotations

import json

import click

from device_agent.bundle import PrivateKey, TrustStore, add_signatures, read_bundle, verify_bundle
from device_agent.bundle.trust import verify_initial
from device_agent.errors import BundleError
from device_agent.fsutil import atomic_write
from toolchain import bundles
from toolchain.cli.common import echo_json, echo_summary, load_keys, passphrase

BUNDLE = click.Path(exists=True, dir_okay=False)


@click.command()
@click.option("--out", "stem", required=True, type=click.Path(dir_okay=False), help="Writes OUT.key and OUT.pub.")
def keygen(stem: str) -> None:
    """Create an Ed25519 release key pair.

    The private key (OUT.key) is written with mode 0600 and never overwritten; set
    EDGEFLEET_KEY_PASSPHRASE to encrypt it. Copy OUT.pub to devices' trust/ directories.
    """
    key = PrivateKey.generate()
    key_path, pub_path = key.save(stem, passphrase())
    click.echo(f"key id {key.keyid}\nprivate key {key_path} (keep secret)\npublic key  {pub_path}")


@click.command()
@click.argument("bundle", type=BUNDLE)
@click.option("--key", "keys", required=True, multiple=True, type=click.Path(exists=True), help="Key to add (repeat).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Default: rewrite BUNDLE in place.")
def sign(bundle: str, keys: tuple[str, ...], output: str | None) -> None:
    """Add signatures to BUNDLE (existing ones are kept)."""
    data = add_signatures(bundles.read_file(bundle), load_keys(keys))
    atomic_write(output or bundle, data)
    signed = read_bundle(data, check_hashes=False).signatures
    click.echo(f"wrote {output or bundle}: signed by {', '.join(s.keyid for s in signed)}")


@click.command()
@click.argument("bundle", type=BUNDLE)
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True),
    help="Trusted .pub file or directory (repeat).",
)
@click.option("--threshold", default=1, show_default=True, type=click.IntRange(min=1), help="Valid signatures needed.")
@click.option("--trust-metadata", type=BUNDLE, help="Signed trust.json instead of --trust (as flashed devices use).")
@click.option(
    "--committed-sequence", type=click.IntRange(min=0), help="Refuse unless the bundle's sequence is above this."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(
    bundle: str,
    trust: tuple[str, ...],
    threshold: int,
    trust_metadata: str | None,
    committed_sequence: int | None,
    as_json: bool,
) -> None:
    """Verify BUNDLE as a device would: signatures, hashes, structure, anti-rollback.

    Give the device's release keys (--trust, --threshold) or its trust metadata (--trust-metadata:
    its release keys and threshold, revocations ("[revoked-key]") and expiry ("[trust-expired]")).
    Exits 0 when the bundle would be accepted; otherwise prints one line naming the reason
    (e.g. "[hash-mismatch]") and exits 1.
    """
    store = _store(trust, threshold, trust_metadata)
    data = bundles.read_file(bundle)
    try:
        result = bundles.verify(data, store, committed_sequence)
    except BundleError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "reason": exc.code, "detail": str(exc)}))
            raise SystemExit(1) from None
        raise click.ClickException(f"refused: {exc} [{exc.code}]") from None
    m, signers = result.manifest, list(result.signed_by)
    if as_json:
        doc = {"ok": True, "name": m.name, "version": m.version, "sequence": m.sequence, "signed_by": signers}
        click.echo(json.dumps(doc))
        return
    click.echo(f"OK {m.name} {m.version} (sequence {m.sequence}), signed by {', '.join(signers)}")


def _store(trust: tuple[str, ...], threshold: int, trust_metadata: str | None) -> TrustStore:
    if trust_metadata is None:
        if not trust:
            raise click.UsageError("give --trust KEY.pub or --trust-metadata trust.json")
        return TrustStore.from_paths(trust, threshold)
    if trust:
        raise click.UsageError("--trust and --trust-metadata exclude each other")
    return verify_initial(bundles.read_file(trust_metadata)).release_store()


@click.command()
@click.argument("bundle", type=BUNDLE)
@click.option("--trust", multiple=True, type=click.Path(exists=True), help="Also verify signatures against these keys.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and signatures as JSON.")
def inspect(bundle: str, trust: tuple[str, ...], as_json: bool) -> None:
    """Show what BUNDLE holds: model, tensors, files, requirements, signatures, provenance.

    Structure and file hashes are always checked; signatures only with --trust.
    """
    data = bundles.read_file(bundle)
    result = verify_bundle(data, TrustStore.from_paths(trust)) if trust else read_bundle(data)
    if not as_json:
        echo_summary(result, size=len(data))
        return
    echo_json(
        {
            "manifest": result.manifest.to_dict(),
            "signatures": [s.keyid for s in result.signatures],
            "verified_by": list(result.signed_by),
            "size": len(data),
        }
    )


COMMANDS = [keygen, sign, verify, inspect]
