"""``fleetctl capture enable/disable/status/ls/export/label/purge``: field data capture.

Off until an operator enables a policy for a selector; every command here that changes something is
audited on the fleet manager. ``export`` writes the toolchain's feeds ``.npz`` (``edgetool quantize
--calibration``, ``edgetool evaluate --data``) and a sidecar ``.json`` with each sample's metadata.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path

import click

from device_agent.cliutil import Group
from fleet.access import parse_duration
from fleet.cli.common import api, emit, json_option

LS_COLS = ["device", "id", "sku", "reason", "score", "model_name", "model_version", "top1", "conf", "label"]
POLICY_COLS = ["id", "selector", "model", "rules", "until", "enabled", "expired", "created_by"]
REASONS = click.Choice(["low-confidence", "drift", "random"])


def _since(value: str | None) -> float | None:
    """``7d`` (that long ago) or epoch seconds."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return time.time() - parse_duration(value)


@click.group(cls=Group)
def capture() -> None:
    """Field data capture: policies, captured samples, exports for the toolchain, labels, purges."""


@capture.command("enable")
@click.option("--selector", default="", help="sku=X,tag=Y (default: every device).")
@click.option("--model", help="NAME or NAME@VERSION the policy applies to (default: any model).")
@click.option(
    "--rule", "rules", multiple=True, required=True, help="low-confidence:T | drift[:PSI] | random:R (repeat)."
)
@click.option("--per-class-max", type=click.IntRange(1, 100_000), help="Samples kept per predicted class.")
@click.option(
    "--max-mb", type=click.FloatRange(0.001, 1024), default=20.0, show_default=True, help="Device store bound."
)
@click.option(
    "--max-per-hour", type=click.IntRange(1), default=120, show_default=True, help="Captures per device and hour."
)
@click.option("--until", help="How long the policy lasts, e.g. 7d (default: until disabled).")
@json_option
@click.pass_context
def capture_enable(
    ctx: click.Context,
    selector: str,
    model: str | None,
    rules: tuple[str, ...],
    per_class_max: int | None,
    max_mb: float,
    max_per_hour: int,
    until: str | None,
    as_json: bool,
) -> None:
    """Enable capture on the devices SELECTOR matches (delivered over MQTT, kept on the device)."""
    body: dict[str, object] = {"selector": selector, "model": model, "rules": list(rules)}
    body["per_class_max"] = per_class_max
    body |= {"max_mb": max_mb, "max_per_hour": max_per_hour, "until": until}
    row = api(ctx).post("/capture/policies", body)
    if as_json:
        emit(row, True)
    else:
        click.echo(f"capture policy {row['id']} enabled for {row['selector'] or 'every device'}: {row['rules']}")


@capture.command("disable")
@click.option("--selector", help="Disable the policies of this selector.")
@click.option("--all", "all_", is_flag=True, help="Disable every enabled policy.")
@json_option
@click.pass_context
def capture_disable(ctx: click.Context, selector: str | None, all_: bool, as_json: bool) -> None:
    """Stop capturing (devices still upload what they hold)."""
    if (selector is None) == (not all_):
        raise click.UsageError("give --selector or --all")
    result = api(ctx).post("/capture/policies/disable", {"selector": None if all_ else selector})
    emit(result, True) if as_json else click.echo(f"disabled policies: {result['disabled'] or 'none'}")


@capture.command("status")
@json_option
@click.pass_context
def capture_status(ctx: click.Context, as_json: bool) -> None:
    """Policies (enabled and past) and how many samples the fleet manager holds."""
    doc = api(ctx).get("/capture/status")
    if as_json:
        emit(doc, True)
        return
    emit(doc["policies"], False, POLICY_COLS)
    click.echo(f"samples held: {doc['samples']['samples']} ({doc['samples']['bytes']} bytes)")


@capture.command("ls")
@click.option("--device")
@click.option("--reason", type=REASONS)
@click.option("--model", help="NAME or NAME@VERSION.")
@click.option("--since", help="7d (that long ago) or epoch seconds.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@json_option
@click.pass_context
def capture_ls(
    ctx: click.Context,
    device: str | None,
    reason: str | None,
    model: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Captured samples, oldest first."""
    rows = api(ctx).get("/capture/samples", device=device, reason=reason, model=model, since=_since(since), limit=limit)
    emit(rows, as_json, LS_COLS)


@capture.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="field.npz")
@click.option("--device")
@click.option("--reason", type=REASONS)
@click.option("--model", help="NAME or NAME@VERSION.")
@click.option("--since", help="7d (that long ago) or epoch seconds.")
@click.option("--limit", type=click.IntRange(1, 1_000_000))
@click.option("--labelled-only", is_flag=True, help="Only samples with a label (for edgetool evaluate).")
@json_option
@click.pass_context
def capture_export(
    ctx: click.Context,
    output: Path,
    device: str | None,
    reason: str | None,
    model: str | None,
    since: str | None,
    limit: int | None,
    labelled_only: bool,
    as_json: bool,
) -> None:
    """Write OUTPUT (feeds .npz: x or one array per input, and y: labels, -1 where none) and OUTPUT.json."""
    query = {"device": device, "reason": reason, "model": model, "since": _since(since), "limit": limit}
    query["labelled"] = True if labelled_only else None
    client = api(ctx)
    sidecar = client.post("/capture/exports", {k: v for k, v in query.items() if v is not None})
    data = client.get_bytes(f"/capture/exports/{sidecar['npz_sha256']}.npz")
    if hashlib.sha256(data).hexdigest() != sidecar["npz_sha256"]:
        raise click.ClickException("the export changed in transit (sha256 differs) [hash-mismatch]")
    output.write_bytes(data)
    sidecar_path = output.with_name(output.name + ".json")
    sidecar_path.write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if as_json:
        emit({k: v for k, v in sidecar.items() if k != "samples"}, True)
    else:
        click.echo(
            f"{output}: {sidecar['count']} samples ({sidecar['labelled']} labelled), sha256 {sidecar['npz_sha256']}"
        )
        click.echo(f"{sidecar_path}: metadata per sample")


@capture.command("label")
@click.argument("sample", required=False, metavar="[DEVICE/ID]")
@click.argument("label", required=False)
@click.option(
    "--csv",
    "csv_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with columns device,id,label (a header row).",
)
@json_option
@click.pass_context
def capture_label(
    ctx: click.Context, sample: str | None, label: str | None, csv_file: Path | None, as_json: bool
) -> None:
    """Label one sample (DEVICE/ID LABEL; a class index for edgetool evaluate) or many from a CSV."""
    if csv_file is not None:
        try:
            with csv_file.open(newline="", encoding="utf-8") as fh:
                labels = [
                    {"device": r["device"], "id": r["id"], "label": r["label"] or None} for r in csv.DictReader(fh)
                ]
        except (KeyError, csv.Error, UnicodeDecodeError) as exc:
            raise click.ClickException(f"{csv_file}: needs columns device,id,label ({exc}) [bad-csv]") from None
    elif sample and label is not None and "/" in sample:
        device, _, sample_id = sample.partition("/")
        labels = [{"device": device, "id": sample_id, "label": label}]
    else:
        raise click.UsageError("give DEVICE/ID LABEL or --csv FILE")
    result = api(ctx).post("/capture/labels", {"labels": labels})
    emit(result, True) if as_json else click.echo(f"labelled {result['labelled']} of {len(labels)} samples")


@capture.command("purge")
@click.option("--device", help="Every sample of this device (a data-protection request).")
@click.option("--before", help="Samples captured before this long ago (e.g. 30d) or epoch seconds.")
@click.option("--reason", type=REASONS)
@click.option("--model", help="NAME or NAME@VERSION.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def capture_purge(
    ctx: click.Context,
    device: str | None,
    before: str | None,
    reason: str | None,
    model: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete captured samples (index and files) on the fleet manager. Admin only; audited."""
    query = {"device": device, "before": _since(before), "reason": reason, "model": model}
    query = {k: v for k, v in query.items() if v is not None}
    if not query:
        raise click.UsageError("give --device, --before, --reason or --model")
    if not yes:
        click.confirm(f"delete the samples matching {query}?", abort=True)
    result = api(ctx).post("/capture/purge", query)
    emit(result, True) if as_json else click.echo(f"purged {result['purged']} samples")
