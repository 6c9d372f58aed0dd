"""``fleetctl simulate``: the click command. Light to import (click and the simulation's config only);
the simulator itself (numpy, paho, the agent) is imported when the command runs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from fleet.sim.config import AGENT_MODE_MAX, SIM_PROBATION, Fault, SimulationConfig, pick_mode

OPTIONS = [
    click.option("--devices", required=True, type=click.IntRange(min=1), help="How many devices."),
    click.option("--fleet", default="default", show_default=True, help="Fleet id."),
    click.option(
        "--broker", required=True, help="mqtt://HOST:PORT of the fleet's broker; several cluster nodes comma-separated."
    ),
    click.option(
        "--bundle",
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Initial bundle, committed on every device.",
    ),
    click.option(
        "--trust",
        multiple=True,
        required=True,
        type=click.Path(exists=True, path_type=Path),
        help="Release public key(s) (repeat).",
    ),
    click.option("--skus", default="sim", show_default=True, help="Comma-separated skus, assigned round-robin."),
    click.option(
        "--fault",
        "faults",
        multiple=True,
        help="NAME@VERSION[:SKU]=selftest|slow|crash|slower:F|errors:R|lowconf:D|drift:S (repeat).",
    ),
    click.option(
        "--noise",
        default=0.0,
        show_default=True,
        type=click.FloatRange(0.0, 1.0),
        help="Field noise on every device: each inference stalls 5-200 ms with this probability; error bursts.",
    ),
    click.option(
        "--offline-rate",
        default=0.0,
        show_default=True,
        type=click.FloatRange(0.0, 0.99),
        help="Fraction of devices offline at any time.",
    ),
    click.option("--duration", type=click.FloatRange(min=0), help="Seconds to run (default: until Ctrl-C)."),
    click.option(
        "--telemetry-interval", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds."
    ),
    click.option(
        "--replay-rate",
        default=5.0,
        show_default=True,
        type=click.FloatRange(min=0),
        help="Inferences per second per device.",
    ),
    click.option(
        "--workdir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Keep device homes here (default: a temporary directory; lean mode puts it on /dev/shm when it exists).",
    ),
    click.option(
        "--mode",
        type=click.Choice(["auto", "agents", "lean"]),
        default="auto",
        show_default=True,
        help=f"agents: a full agent (4 threads) per device; lean: thousands of devices per process on one "
        f"MQTT thread and a shared pool; auto: agents up to {AGENT_MODE_MAX} devices in one process, else lean.",
    ),
    click.option(
        "--processes", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes (lean mode)."
    ),
    click.option(
        "--probation-seconds",
        type=click.FloatRange(min=0.1),
        help=f"Commit a new model after this long on probation (default {SIM_PROBATION.seconds:g}, "
        f"or {SIM_PROBATION.min_inferences} inferences).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON."),
]


def with_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(OPTIONS):
        fn = option(fn)
    return fn


def simulation_config(opts: dict[str, Any]) -> SimulationConfig:
    """The ``SimulationConfig`` of the command's options. Raises: ConfigError (a bad ``--fault``)."""
    config = SimulationConfig(
        devices=opts["devices"],
        fleet=opts["fleet"],
        broker=opts["broker"],
        bundle=opts["bundle"],
        trust=list(opts["trust"]),
        skus=tuple(s.strip() for s in opts["skus"].split(",") if s.strip()),
        faults=tuple(Fault.parse(f) for f in opts["faults"]),
        offline_rate=opts["offline_rate"],
        workdir=opts["workdir"],
        telemetry_interval_s=opts["telemetry_interval"],
        replay_rate=opts["replay_rate"],
        noise=opts["noise"],
    )
    if opts["probation_seconds"] is not None:
        config.probation = replace(config.probation, seconds=opts["probation_seconds"])
    return config


@click.command("simulate")
@with_options
def simulate_command(**opts: Any) -> None:
    """Run N simulated devices with the real device-agent code, with injected faults.

    Each device has its own home, MQTT session, update pipeline and telemetry; inference runs in
    the bundle's real runtime. Faults: `selftest` (the release's self-test fails on that sku),
    `slow` (inference gets slower: probation's latency gate trips), `crash` (the device dies while
    installing, reboots, and gives up after repeated crashes), and subtle regressions the device's own
    gates let through but the fleet's health gate should catch: `slower:F` (latency times F),
    `errors:R` (adds error rate R), `lowconf:D` (confidence lower by D), `drift:S` (inputs shifted by S
    standard deviations). `--noise P` adds field noise to every device, whatever its release.

    Lean mode (thousands of devices, `--processes K`) runs the same agent and updater code per device,
    but multiplexes a process's MQTT connections on one thread, runs the devices' work on a shared
    thread pool, and shares one loaded runtime per model per process (each device still verifies
    every bundle itself). See docs/operations.md.
    """
    from fleet.sim.runner import run_simulation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("edge-agent").setLevel(logging.WARNING)
    config = simulation_config(opts)
    devices, fleet, broker, processes = opts["devices"], opts["fleet"], opts["broker"], opts["processes"]
    chosen = pick_mode(opts["mode"], devices, processes)
    click.echo(
        f"simulating {devices} devices of fleet {fleet} on {broker}, {chosen} mode"
        + (f" in {processes} processes" if chosen == "lean" else "")
        + " (Ctrl-C to stop)",
        err=True,
    )
    summary = run_simulation(config, opts["duration"], mode=chosen, processes=processes)
    click.echo(
        json.dumps(summary)
        if opts["as_json"]
        else f"versions {summary['versions']}, states {summary['states']}, crashes {summary['crashes']}"
    )
