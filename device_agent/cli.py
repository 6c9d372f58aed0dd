"""``edge-agent``: the command the device's init system runs, and the on-device tools.

``run`` starts the agent; ``status``, ``predict`` and ``rollback`` talk to the running agent's
local API when it runs, and otherwise act on the device home directly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from device_agent import __version__
from device_agent.cliutil import Group, debug_option
from device_agent.errors import ConfigError, EdgefleetError, TransportError

if TYPE_CHECKING:
    from device_agent.core import AgentParts

home_option = click.option(
    "--home",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The device home directory (written by `edgetool flash`).",
)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edge-agent")
@debug_option
def cli() -> None:
    """Run verified model bundles on this device: inference, telemetry, safe updates."""


@cli.command()
@home_option
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def run(home: Path, log_level: str) -> None:
    """Run the agent until SIGTERM/SIGINT (a second signal exits at once).

    Loads the active slot's verified model (falling back to the previous slot if it no longer
    verifies), serves the local API, reports over MQTT and applies updates sent on cmd/deploy.
    """
    run_agent(home, log_level)


def run_agent(home: Path, log_level: str, parts: AgentParts | None = None) -> None:
    """``edge-agent run``, with the agent's replaceable ``parts`` (defaults: the real ones)."""
    from device_agent.agent import Agent
    from device_agent.config import load_config
    from device_agent.home import Home

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    h = Home(home)
    agent = Agent(h, load_config(h.config), parts=parts)
    agent.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if agent.stop_event.is_set():
            os._exit(1)  # second signal: cold stop
        logging.getLogger("edge-agent").info("stopping (signal %d); again to exit at once", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    m = agent.info().model
    served = f"{m.name} {m.version}" if m else "no model"
    click.echo(
        f"edge-agent {__version__}: serving {served} on {agent.api.url if agent.api else 'no local API'}", err=True
    )
    agent.run()


def _running_client(home: Path) -> Any:
    from device_agent.api import AgentClient
    from device_agent.home import Home

    info = Home(home).read_run_info()
    if not info or not info.get("api"):
        return None
    url, token = str(info["api"]), ""
    if url.startswith("http"):  # TCP: the token the agent wrote into its home (readable by its owner only)
        try:
            token = Home(home).api_token.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
    client = AgentClient(url, timeout=30, token=token)
    try:
        client.status()
    except TransportError:
        return None
    return client


@cli.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(home: Path, as_json: bool) -> None:
    """Show the active slot, its model (name, version, sequence, sha256) and the update state."""
    from device_agent.home import Home
    from device_agent.status import status_document

    client = _running_client(home)
    if client is not None:
        doc = client.status()
    else:
        h = Home(home)
        doc = status_document(h, h.load_state()) | {"running": False}
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    m = doc.get("model") or {}
    click.echo(f"active slot {doc['active_slot']}: {m.get('name')} {m.get('version')} (sequence {m.get('sequence')})")
    click.echo(f"model sha256 {m.get('sha256')}")
    click.echo(f"state {doc['state']}; agent {'running' if doc.get('running') else 'not running'}")
    cap = doc.get("capture") or {}
    policy = cap.get("policy")
    if policy is None:
        click.echo("capture off (no policy)")
    else:
        live = "on" if cap.get("enabled") else ("set, agent not running" if not doc.get("running") else "off")
        stored = f"; {cap['stored']} samples held, {cap['dropped']} dropped" if "stored" in cap else ""
        click.echo(f"capture {live}: policy {json.dumps(policy, sort_keys=True)}{stored}")
    if doc.get("error"):
        click.echo(f"error: {doc['error']}")


def _load_input(path: Path) -> dict[str, Any]:
    import numpy as np

    try:
        if path.suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f"{path} is not a readable .npy/.npz file: {str(exc)[:200]}") from None
    arrays.pop("y", None)  # labels in an eval file are not an input
    return arrays


@cli.command()
@home_option
@click.argument("input_file", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--raw", is_flag=True, help="Return quantized outputs without dequantizing.")
def predict(home: Path, input_file: Path, as_json: bool, raw: bool) -> None:
    """Run INPUT (.npz with one array per input or `x`, or one .npy) through the active model.

    Goes through the running agent's local API when it runs, else loads the active model itself.
    """
    arrays = _load_input(input_file)
    client = _running_client(home)
    if client is not None:
        doc = client.predict(arrays, raw=raw)
        doc["via"] = "agent"
    else:
        doc = _predict_offline(home, arrays, raw) | {"via": "direct"}
    if as_json:
        click.echo(json.dumps(doc))
        return
    m = doc["model"]
    click.echo(f"{m['name']} {m['version']} (slot {m['slot']}), {doc['latency_ms']:.2f} ms")
    if doc.get("top1") is not None:
        labels = doc.get("labels") or doc["top1"]
        for label, conf in zip(labels, doc["confidence"], strict=True):
            click.echo(f"  {label}  ({conf:.3f})")
    else:
        for name, value in doc["outputs"].items():
            click.echo(f"  {name}: {json.dumps(value)[:200]}")


def _predict_offline(home: Path, arrays: dict[str, Any], raw: bool) -> dict[str, Any]:
    from device_agent.api import prediction_json
    from device_agent.config import load_config
    from device_agent.engine import InferenceEngine
    from device_agent.home import Home
    from device_agent.model import LoadedModel
    from device_agent.trust_store import DeviceTrust

    h = Home(home)
    cfg = load_config(h.config)
    state = h.load_state()
    trust = DeviceTrust.load(h, cfg.trust.threshold).installed_store()
    model = LoadedModel.load(h.slot(state.active).read_bytes(), trust, slot=state.active, threads=cfg.runtime.threads)
    return prediction_json(InferenceEngine(model).predict(arrays, raw=raw))


@cli.command()
@home_option
def rollback(home: Path) -> None:
    """Reactivate the previous slot (through the running agent, or directly when it is stopped)."""
    client = _running_client(home)
    if client is not None:
        if not client.rollback():
            raise click.ClickException("nothing to roll back to")
    else:
        from device_agent.config import load_config
        from device_agent.fetch import HttpFetcher
        from device_agent.home import Home
        from device_agent.trust_store import DeviceTrust
        from device_agent.updater import Updater

        h = Home(home)
        cfg = load_config(h.config)
        trust = DeviceTrust.load(h, cfg.trust.threshold)
        updater = Updater(h, cfg, trust.store, HttpFetcher())
        updater.installed_trust = trust.installed_store()
        updater.boot()
        if not updater.rollback("requested", "edge-agent rollback"):
            raise click.ClickException("nothing to roll back to (no verified previous slot)")
    click.echo("rolled back to the previous slot")


def main() -> None:
    try:
        cli(prog_name="edge-agent")
    except EdgefleetError as exc:  # raised outside a command (e.g. during --debug) — keep it one line
        sys.exit(f"error: {exc}")
