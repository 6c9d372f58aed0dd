"""``edgetool``: the engineer's command line. Commands are thin: parse, call the library, report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from device_agent import __version__
from device_agent.bundle import Bundle, PrivateKey, TrustStore, add_signatures, read_bundle, verify_bundle
from device_agent.cliutil import Group, debug_option
from device_agent.errors import BundleError, ConfigError
from device_agent.fsutil import atomic_write
from toolchain.cli_quant import COMMANDS

PASSPHRASE_ENV = "EDGEFLEET_KEY_PASSPHRASE"


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _load_keys(paths: tuple[str, ...]) -> list[PrivateKey]:
    return [PrivateKey.load(p, _passphrase()) for p in paths]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgetool")
@debug_option
def cli() -> None:
    """Prepare models for edge devices: convert, quantize, evaluate, check against device profiles,
    then package, sign, verify and inspect signed bundles."""


@cli.command()
@click.option("--out", "stem", required=True, type=click.Path(dir_okay=False), help="Writes OUT.key and OUT.pub.")
def keygen(stem: str) -> None:
    """Create an Ed25519 release key pair.

    The private key (OUT.key) is written with mode 0600 and never overwritten; set
    EDGEFLEET_KEY_PASSPHRASE to encrypt it. Copy OUT.pub to devices' trust/ directories.
    """
    key = PrivateKey.generate()
    key_path, pub_path = key.save(stem, _passphrase())
    click.echo(f"key id {key.keyid}\nprivate key {key_path} (keep secret)\npublic key  {pub_path}")


@cli.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Bundle name, [a-z0-9-].")
@click.option("--version", "version", required=True, help="Semantic version, e.g. 1.0.0.")
@click.option("--sequence", required=True, type=click.IntRange(min=1), help="Anti-rollback counter; must grow.")
@click.option(
    "--key", "keys", required=True, multiple=True, type=click.Path(exists=True), help="Signing key (repeat to co-sign)."
)
@click.option(
    "--selftest-inputs", type=click.Path(exists=True, path_type=Path), help=".npz/.npy inputs for the self-test."
)
@click.option(
    "--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Class labels, one per line."
)
@click.option(
    "--calibration", type=click.Path(exists=True, path_type=Path), help=".npz/.npy data for drift references."
)
@click.option(
    "--report",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Quantization report.json for provenance.",
)
@click.option("--source-model", type=click.Path(exists=True, path_type=Path), help="Float model this was made from.")
@click.option(
    "--task", type=click.Choice(["classification", "regression", "none"]), help="Default: classification with --labels."
)
@click.option("--description", default="", help="Free text for operators.")
@click.option("--selftest-samples", default=8, show_default=True, type=click.IntRange(1, 1024))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--min-runtime-version", default="0.0.0", show_default=True)
@click.option("--min-agent-version", default="0.1.0", show_default=True)
@click.option("--arch", "architectures", multiple=True, help="Allowed architectures (repeat); default any.")
@click.option("--ram-bytes", type=click.IntRange(min=0), help="RAM requirement; default an estimate.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Default: NAME-VERSION.efb.")
def package(model: Path, output: str | None, keys: tuple[str, ...], **kw: Any) -> None:
    """Package MODEL (.tflite or .onnx) as a signed bundle.

    Reads the inputs and outputs from the runtime, runs the model on the self-test inputs (given,
    else the first calibration samples, else generated from the model's hash) to record the
    outputs a device must reproduce, and records drift references from --calibration.
    """
    from toolchain.packaging import PackageOptions
    from toolchain.packaging import package as build

    kw["architectures"] = tuple(kw["architectures"])
    opts = PackageOptions(keys=_load_keys(keys), **kw)
    data = build(model, opts)
    out = output or f"{opts.name}-{opts.version}.efb"
    atomic_write(out, data)
    bundle = read_bundle(data)
    click.echo(f"wrote {out} ({len(data)} bytes), sha256 {bundle.manifest.model.sha256[:16]}…")
    _print_summary(bundle)


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "keys", required=True, multiple=True, type=click.Path(exists=True), help="Key to add (repeat).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Default: rewrite BUNDLE in place.")
def sign(bundle: str, keys: tuple[str, ...], output: str | None) -> None:
    """Add signatures to BUNDLE (existing ones are kept)."""
    data = add_signatures(_read(bundle), _load_keys(keys))
    atomic_write(output or bundle, data)
    signed = read_bundle(data, check_hashes=False).signatures
    click.echo(f"wrote {output or bundle}: signed by {', '.join(s.keyid for s in signed)}")


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--trust",
    multiple=True,
    required=True,
    type=click.Path(exists=True),
    help="Trusted .pub file or directory (repeat).",
)
@click.option("--threshold", default=1, show_default=True, type=click.IntRange(min=1), help="Valid signatures needed.")
@click.option(
    "--committed-sequence", type=click.IntRange(min=0), help="Refuse unless the bundle's sequence is above this."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(bundle: str, trust: tuple[str, ...], threshold: int, committed_sequence: int | None, as_json: bool) -> None:
    """Verify BUNDLE as a device would: signatures, hashes, structure, anti-rollback.

    Exits 0 when the bundle would be accepted; otherwise prints one line naming the reason
    (e.g. "[hash-mismatch]") and exits 1.
    """
    store = TrustStore.from_paths(trust, threshold)
    data = _read(bundle)
    try:
        probe = read_bundle(data, check_hashes=False) if committed_sequence is not None else None
        floor = {probe.manifest.name: committed_sequence} if probe and committed_sequence is not None else None
        result = verify_bundle(data, store, highest_sequence=floor)
    except BundleError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "reason": exc.code, "detail": str(exc)}))
            raise SystemExit(1) from None
        raise click.ClickException(f"refused: {exc} [{exc.code}]") from None
    m = result.manifest
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": True,
                    "name": m.name,
                    "version": m.version,
                    "sequence": m.sequence,
                    "signed_by": list(result.signed_by),
                }
            )
        )
        return
    click.echo(f"OK {m.name} {m.version} (sequence {m.sequence}), signed by {', '.join(result.signed_by)}")


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@click.option("--trust", multiple=True, type=click.Path(exists=True), help="Also verify signatures against these keys.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and signatures as JSON.")
def inspect(bundle: str, trust: tuple[str, ...], as_json: bool) -> None:
    """Show what BUNDLE holds: model, tensors, files, requirements, signatures, provenance.

    Structure and file hashes are always checked; signatures only with --trust.
    """
    data = _read(bundle)
    result = verify_bundle(data, TrustStore.from_paths(trust)) if trust else read_bundle(data)
    if as_json:
        doc = {
            "manifest": result.manifest.to_dict(),
            "signatures": [s.keyid for s in result.signatures],
            "verified_by": list(result.signed_by),
            "size": len(data),
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    _print_summary(result, size=len(data))


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--target", required=True, type=click.Path(file_okay=False, path_type=Path), help="Device home to write.")
@click.option("--device-id", required=True, help="Device id, [a-z0-9-].")
@click.option("--fleet", default="default", show_default=True, help="Fleet id, [a-z0-9-].")
@click.option("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT.")
@click.option(
    "--trust",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Release public key(s) the device trusts.",
)
@click.option(
    "--threshold", default=1, show_default=True, type=click.IntRange(min=1), help="Valid signatures a bundle needs."
)
@click.option("--sku", default="generic", show_default=True, help="Hardware SKU reported to the fleet.")
@click.option("--tag", "tags", multiple=True, help="Device tag (repeat).")
@click.option("--username", default="", help="MQTT username.")
@click.option("--password", default="", help="MQTT password (agent.toml is then written with mode 0600).")
@click.option("--cafile", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CA certificate for TLS.")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Client certificate.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Client certificate key.")
@click.option("--telemetry-interval", default=10.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds.")
@click.option(
    "--replay-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Self-test replays per second (demos).",
)
@click.option("--api-listen", default="127.0.0.1:0", show_default=True, help="Local API HOST:PORT (0: any free port).")
@click.option("--force", is_flag=True, help="Overwrite an existing device home.")
def flash(
    bundle: Path, target: Path, trust: tuple[Path, ...], tags: tuple[str, ...], telemetry_interval: float, **kw: Any
) -> None:
    """Provision a device: write the home directory with BUNDLE verified and committed in slot A.

    Writes agent.toml, trust/*.pub, slots/a/bundle.efb, state.json, downloads/ and spool/.
    Start the device with `edge-agent run --home TARGET`.
    """
    from toolchain.flash import FlashOptions
    from toolchain.flash import flash as do_flash

    opts = FlashOptions(trust=list(trust), tags=tags, telemetry_interval_s=telemetry_interval, **kw)
    home = do_flash(bundle, target, opts)
    m = read_bundle(home.slot("a").read_bytes()).manifest
    click.echo(
        f"flashed {opts.device_id} ({opts.fleet}) at {target}: {m.name} {m.version} (sequence {m.sequence}) in slot a"
    )
    click.echo(f"start it with: edge-agent run --home {target}")


def _tensor_line(t: Any) -> str:
    q = f" q(scale={t.quantization.scale[0]:.4g}, zp={t.quantization.zero_point[0]})" if t.quantization else ""
    return f"{t.name} {t.dtype}{list(t.shape)}{q}"


def _print_summary(bundle: Bundle, size: int | None = None) -> None:
    m = bundle.manifest
    sigs = ", ".join(s.keyid + (" ✓" if s.keyid in bundle.signed_by else "") for s in bundle.signatures)
    rows = [
        ("bundle", f"{m.name} {m.version} (sequence {m.sequence}, {m.format})"),
        ("runtime", f"{m.runtime.name} >= {m.runtime.min_version}"),
        ("model", f"{m.model.path} {m.model.size} bytes sha256 {m.model.sha256}"),
        *[("input", _tensor_line(t)) for t in m.inputs],
        *[("output", _tensor_line(t)) for t in m.outputs],
        ("postprocess", m.postprocess.kind + (f" ({m.postprocess.labels})" if m.postprocess.labels else "")),
        (
            "requires",
            f"RAM {m.requirements.ram_bytes} B, flash {m.requirements.flash_bytes} B, "
            f"agent >= {m.requirements.min_agent_version}"
            + (f", arch {'/'.join(m.requirements.architectures)}" if m.requirements.architectures else ""),
        ),
        (
            "selftest",
            f"{m.selftest.path} atol={m.selftest.atol:.3g} rtol={m.selftest.rtol:.3g}" if m.selftest else "none",
        ),
        ("drift", m.drift or "none"),
        ("files", ", ".join(f"{e.path} ({e.size} B)" for e in m.files) or "none"),
        ("signatures", sigs + ("" if bundle.signed_by else " (not verified: pass --trust)")),
    ]
    if size is not None:
        rows.insert(1, ("size", f"{size} bytes"))
    tools = m.provenance.get("tools")
    if isinstance(tools, dict):
        rows.append(("built with", ", ".join(f"{k} {v}" for k, v in sorted(tools.items()))))
    for label, value in rows:
        click.echo(f"{label:>11}  {value}")


for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="edgetool")
