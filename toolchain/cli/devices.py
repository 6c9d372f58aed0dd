"""``edgetool profiles``, ``check`` and ``flash``: device profiles, whether a model fits one, provisioning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from device_agent.bundle import read_bundle
from toolchain.cli.common import MODEL, echo_json, options

FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

# One option per field of device_agent.provision.FlashOptions (the bundle and target aside).
FLASH_OPTIONS = [
    click.option(
        "--target", required=True, type=click.Path(file_okay=False, path_type=Path), help="Device home to write."
    ),
    click.option("--device-id", required=True, help="Device id, [a-z0-9-]."),
    click.option("--fleet", default="default", show_default=True, help="Fleet id, [a-z0-9-]."),
    click.option(
        "--broker",
        required=True,
        help="mqtt://HOST:PORT or mqtts://HOST:PORT; several nodes of one cluster comma-separated (failover).",
    ),
    click.option(
        "--trust",
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Release public key(s) the device trusts (simple setups; fixed until reflashed).",
    ),
    click.option(
        "--trust-metadata",
        type=FILE,
        help="Signed trust.json (edgetool trust init) instead of --trust: keys can then rotate in the field.",
    ),
    click.option(
        "--threshold", default=1, show_default=True, type=click.IntRange(min=1), help="Valid signatures a bundle needs."
    ),
    click.option("--sku", default="generic", show_default=True, help="Hardware SKU reported to the fleet."),
    click.option("--tag", "tags", multiple=True, help="Device tag (repeat)."),
    click.option("--username", default="", help="MQTT username."),
    click.option("--password", default="", help="MQTT password (agent.toml is then written with mode 0600)."),
    click.option("--cafile", type=FILE, help="CA certificate for TLS."),
    click.option("--certfile", type=FILE, help="Client certificate."),
    click.option("--keyfile", type=FILE, help="Client certificate key."),
    click.option(
        "--telemetry-interval", default=10.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds."
    ),
    click.option(
        "--replay-rate",
        default=0.0,
        show_default=True,
        type=click.FloatRange(min=0),
        help="Self-test replays per second (demos).",
    ),
    click.option(
        "--api-listen",
        default="unix",
        show_default=True,
        help="Local API: unix (HOME/run/api.sock), unix:/PATH, or HOST:PORT (TCP with the token in HOME/api.token).",
    ),
    click.option(
        "--model-name",
        "model_names",
        multiple=True,
        help="Bundle name the device accepts (repeat); others are REJECTED wrong-model. Default: BUNDLE's name.",
    ),
    click.option(
        "--fleet-url",
        "fleet_urls",
        multiple=True,
        help="URL prefix artifacts may be downloaded from (repeat). Default: http(s) on the broker's host.",
    ),
    click.option("--force", is_flag=True, help="Overwrite an existing device home."),
]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def profiles(as_json: bool) -> None:
    """List the built-in device profiles (use --profile FILE.toml for your own)."""
    from toolchain.profiles import builtin_profiles

    found = builtin_profiles()
    if as_json:
        echo_json({name: p.to_dict() for name, p in found.items()})
        return
    for p in found.values():
        click.echo(
            f"{p.name:<18} {p.runtime} {p.runtime_version:<8} {p.arch:<8} RAM {p.ram_bytes >> 20} MiB, "
            f"flash {p.flash_bytes >> 20} MiB, {p.latency_budget_ms:g} ms budget, ×{p.latency_factor:g} vs host"
        )
        click.echo(f"{'':<18} {p.description}")


@click.command()
@click.argument("target", type=MODEL)
@click.option("--profile", "profile_name", required=True, help="Built-in profile name or a .toml file.")
@click.option("--runs", default=30, show_default=True, type=click.IntRange(min=1), help="Timed runs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(target: Path, profile_name: str, runs: int, as_json: bool) -> None:
    """Check a bundle (.efb) or model (.tflite/.onnx; a .keras/SavedModel/.pt2 is converted first) against a profile.

    Exits 0 when it fits, 1 when it does not; prints every check with its numbers.
    """
    from toolchain.check import check as run
    from toolchain.profiles import load_profile

    profile = load_profile(profile_name)
    result = run(target, profile, runs)
    if as_json:
        echo_json(result.to_dict())
    else:
        for row in result.rows:
            click.echo(f"{'ok' if row.ok else 'FAIL':>4}  {row.check:<16} {row.value}  (limit {row.limit})")
        click.echo(f"      ops ({len(result.ops)}): {', '.join(result.ops)}")
        click.echo(f"{target.name} {'fits' if result.fits else 'does not fit'} {profile.name}")
    if not result.fits:
        raise SystemExit(1)


@click.command()
@click.argument("bundle", type=FILE)
@options(FLASH_OPTIONS)
def flash(
    bundle: Path, target: Path, trust: tuple[Path, ...], tags: tuple[str, ...], telemetry_interval: float, **kw: Any
) -> None:
    """Provision a device: write the home directory with BUNDLE verified and committed in slot A.

    Writes agent.toml, trust/*.pub (or trust/trust.json), slots/a/bundle.efb, state.json, downloads/
    and spool/. Give either --trust (and --threshold) or --trust-metadata.
    Start the device with `edge-agent run --home TARGET`.
    """
    from toolchain.flash import FlashOptions
    from toolchain.flash import flash as do_flash

    opts = FlashOptions(trust=list(trust), tags=tags, telemetry_interval_s=telemetry_interval, **kw)
    home = do_flash(bundle, target, opts)
    m = read_bundle(home.slot("a").read_bytes()).manifest
    where = f"{opts.device_id} ({opts.fleet}) at {target}"
    click.echo(f"flashed {where}: {m.name} {m.version} (sequence {m.sequence}) in slot a")
    click.echo(f"start it with: edge-agent run --home {target}")


COMMANDS = [profiles, check, flash]
