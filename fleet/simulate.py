"""``fleetctl simulate``: a fleet of devices running the real device-agent code in this process.

Each simulated device is a real ``device_agent.agent.Agent`` with its own device home (provisioned
like ``edgetool flash`` does), its own MQTT connection and session, the real update pipeline
(download, verify, install, self-test, probation, rollback) and real telemetry. Inference runs in
the real runtime of the bundle (LiteRT or ONNX Runtime), fed by the bundle's self-test inputs.
Only the faults are injected (``--fault``), and outages (``--offline-rate``):

- ``selftest``: the release's self-test fails on that sku;
- ``slow``: inference on that release is slower by ``slow_extra_s`` (it breaches the latency gate);
- ``crash``: the device dies while installing that release, reboots, and dies again (crash loop).

Threads per device: the agent's loop, its deployment worker, its replay source and paho's network
thread; a few hundred devices per process is comfortable.
"""

from __future__ import annotations

import logging
import random
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from device_agent.agent import Agent
from device_agent.config import ProbationSection, TelemetrySection, load_config
from device_agent.errors import ConfigError
from device_agent.home import Home
from device_agent.provision import FlashOptions, flash
from device_agent.updater import DeviceCrashed, FaultPlan

log = logging.getLogger("fleetctl.simulate")
FAULT_RE = re.compile(
    r"(?P<release>[a-z0-9][a-z0-9-]*@[0-9A-Za-z.+-]+)(?::(?P<sku>[a-z0-9-]+))?=(?P<kind>selftest|slow|crash)"
)
# The latency gate is a budget, not a ratio: simulated models take a fraction of a millisecond, and on a
# loaded machine a 3x ratio over a 0.1 ms baseline trips on noise; the "slow" fault adds 50 ms.
SIM_PROBATION = ProbationSection(
    min_inferences=20, seconds=15.0, max_error_rate=0.05, latency_budget_ms=20.0, max_latency_ratio=0.0
)


@dataclass(frozen=True)
class Fault:
    release: str  # NAME@VERSION
    sku: str | None  # None: every sku
    kind: str  # selftest | slow | crash

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``NAME@VERSION[:SKU]=selftest|slow|crash``. Raises: ConfigError."""
        m = FAULT_RE.fullmatch(spec.strip())
        if not m:
            raise ConfigError(f"bad fault {spec!r}: expected NAME@VERSION[:SKU]=selftest|slow|crash")
        return cls(m["release"], m["sku"], m["kind"])


@dataclass
class SimulationConfig:
    devices: int
    fleet: str
    broker: str
    bundle: Path
    trust: list[Path]
    skus: tuple[str, ...] = ("sim",)
    faults: tuple[Fault, ...] = ()
    offline_rate: float = 0.0  # fraction of devices that are offline at any moment (rotating outages)
    workdir: Path | None = None
    telemetry_interval_s: float = 5.0
    replay_rate: float = 5.0  # inferences per second per device
    slow_extra_s: float = 0.05  # added latency for the "slow" fault
    probation: ProbationSection = SIM_PROBATION
    seed: int = 0
    id_prefix: str = "sim"


def provision_device(c: SimulationConfig, root: Path, i: int) -> tuple[str, str, Home]:
    """Device ``i``'s id, sku and home (the initial bundle committed in slot A), as ``edgetool flash`` does."""
    device_id = f"{c.id_prefix}-{i:05d}"
    sku = c.skus[i % len(c.skus)]
    opts = FlashOptions(
        device_id=device_id, broker=c.broker, trust=c.trust, fleet=c.fleet, sku=sku,
        telemetry_interval_s=c.telemetry_interval_s, replay_rate=c.replay_rate, force=True,
        extra={"probation": c.probation, "telemetry": TelemetrySection(interval_s=c.telemetry_interval_s, spool_max_points=100)},
    )  # fmt: skip
    return device_id, sku, flash(c.bundle, root / device_id, opts)


def fault_plan(c: SimulationConfig, sku: str, on_crash: Callable[[], None]) -> FaultPlan:
    """The injected faults that apply to a device of ``sku``."""
    plan = FaultPlan(on_crash=on_crash)
    for f in c.faults:
        if f.sku not in (None, sku):
            continue
        if f.kind == "selftest":
            plan.selftest.add(f.release)
        elif f.kind == "slow":
            plan.slow_s[f.release] = c.slow_extra_s
        else:
            plan.crash.add(f.release)
    return plan


def count_agents(agents: Iterable[Agent | None]) -> tuple[dict[str, int], dict[str, int]]:
    """Running devices by active model version, and by update state (committed, deploying, probation)."""
    versions: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for agent in agents:
        if agent is None or agent.engine is None:
            continue
        versions[agent.engine.model.manifest.version] += 1
        s = agent.updater.state
        states["probation" if s.probation else "deploying" if s.pending else "committed"] += 1
    return dict(versions), dict(states)


@dataclass
class _Device:
    id: str
    sku: str
    home: Home
    agent: Agent | None = None
    thread: threading.Thread | None = None
    crashes: int = 0


@dataclass
class Simulation:
    config: SimulationConfig
    devices: dict[str, _Device] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config.devices < 1:
            raise ConfigError("--devices must be at least 1")
        if not 0.0 <= self.config.offline_rate < 1.0:
            raise ConfigError("--offline-rate must be in [0, 1)")
        self._owned: tempfile.TemporaryDirectory[str] | None = None
        self._stop = threading.Event()
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()

    # --- set-up ----------------------------------------------------------------------------------

    def provision(self) -> None:
        """Give every device a home with the initial bundle committed in slot A."""
        c = self.config
        if c.workdir is None:
            self._owned = tempfile.TemporaryDirectory(prefix="edgefleet-sim-")
            root = Path(self._owned.name)
        else:
            root = c.workdir
        for i in range(c.devices):
            device_id, sku, home = provision_device(c, root, i)
            self.devices[device_id] = _Device(device_id, sku, home)

    def _faults(self, device: _Device) -> FaultPlan:
        return fault_plan(self.config, device.sku, lambda: self._crash(device))

    # --- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start every device (provisioning first if needed) and the outage generator."""
        if not self.devices:
            self.provision()
        for device in self.devices.values():
            self._boot(device)
        if self.config.offline_rate > 0:
            threading.Thread(target=self._outages, name="sim-outages", daemon=True).start()

    def _boot(self, device: _Device) -> None:
        agent = Agent(device.home, load_config(device.home.config), faults=self._faults(device), api=False)
        agent.start()
        thread = threading.Thread(target=agent.run, name=f"sim-{device.id}", daemon=True)
        thread.start()
        device.agent, device.thread = agent, thread

    def _crash(self, device: _Device) -> None:
        """Called from the device's deployment worker: kill that device only, reboot it shortly after."""
        device.crashes += 1
        agent, thread = device.agent, device.thread

        def reboot() -> None:
            if agent is not None:
                agent.crash()
            if thread is not None:
                thread.join(timeout=30)
            if not self._stop.wait(1.0):
                self._boot(device)

        threading.Thread(target=reboot, name=f"reboot-{device.id}", daemon=True).start()
        raise DeviceCrashed  # ends the deployment worker here, as the process would have ended

    def _outages(self) -> None:
        """Keep about ``offline_rate`` of the devices offline, each outage lasting 5-20 s."""
        while not self._stop.wait(1.0):
            for device in self.devices.values():
                # an outage starts with probability rate/mean-duration per second per device
                if device.agent is not None and self._rng.random() < self.config.offline_rate / 12.5:
                    device.agent.go_offline(self._rng.uniform(5.0, 20.0))

    def stop(self) -> dict[str, Any]:
        """Stop every device (warmly); returns the summary taken just before."""
        summary = self.summary()
        self._stop.set()
        for device in self.devices.values():
            if device.agent is not None:
                device.agent.stop()
        for device in self.devices.values():
            if device.thread is not None:
                device.thread.join(timeout=30)
        if self._owned is not None:
            self._owned.cleanup()
        return summary

    # --- reports ---------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counts of devices by active model version, by update state, and crashes so far."""
        versions, states = count_agents(d.agent for d in self.devices.values())
        return {
            "devices": len(self.devices),
            "versions": versions,
            "states": states,
            "crashes": sum(d.crashes for d in self.devices.values()),
        }


AGENT_MODE_MAX = 200  # devices up to which `--mode auto` runs full agents (4 threads each)


def pick_mode(mode: str, devices: int, processes: int) -> str:
    """``agents`` (a full ``Agent`` per device) or ``lean`` (many devices per thread, see simulate_lean)."""
    if mode != "auto":
        return mode
    return "agents" if devices <= AGENT_MODE_MAX and processes == 1 else "lean"


def run_simulation(
    config: SimulationConfig,
    duration_s: float | None,
    report_every_s: float = 10.0,
    mode: str = "agents",
    processes: int = 1,
) -> dict[str, Any]:
    """Provision, start, report every ``report_every_s`` until ``duration_s`` (None: until Ctrl-C), stop."""
    if mode == "lean":
        from fleet.simulate_procs import LeanSimulation

        sim: Simulation | LeanSimulation = LeanSimulation(config, processes)
        sim.start()
    else:
        if processes != 1:
            raise ConfigError("--processes needs --mode lean (full agents run in one process)")
        sim = Simulation(config)
        sim.provision()
        sim.start()
    log.info("simulation: %d devices running (%s mode)", config.devices, mode)
    started = time.monotonic()
    try:
        while duration_s is None or time.monotonic() - started < duration_s:
            time.sleep(min(report_every_s, max(0.1, (duration_s or 1e9) - (time.monotonic() - started))))
            log.info("simulation: %s", sim.summary())
    except KeyboardInterrupt:
        pass
    finally:
        summary = sim.stop()
    return summary


@click.command("simulate")
@click.option("--devices", required=True, type=click.IntRange(min=1), help="How many devices.")
@click.option("--fleet", default="default", show_default=True, help="Fleet id.")
@click.option("--broker", required=True, help="mqtt://HOST:PORT of the fleet's broker.")
@click.option(
    "--bundle",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Initial bundle, committed on every device.",
)
@click.option(
    "--trust",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Release public key(s) (repeat).",
)
@click.option("--skus", default="sim", show_default=True, help="Comma-separated skus, assigned round-robin.")
@click.option("--fault", "faults", multiple=True, help="NAME@VERSION[:SKU]=selftest|slow|crash (repeat).")
@click.option(
    "--offline-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 0.99),
    help="Fraction of devices offline at any time.",
)
@click.option("--duration", type=click.FloatRange(min=0), help="Seconds to run (default: until Ctrl-C).")
@click.option("--telemetry-interval", default=5.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds.")
@click.option(
    "--replay-rate",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Inferences per second per device.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep device homes here (default: a temporary directory; lean mode puts it on /dev/shm when it exists).",
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "agents", "lean"]),
    default="auto",
    show_default=True,
    help=f"agents: a full agent (4 threads) per device; lean: thousands of devices per process on one "
    f"MQTT thread and a shared pool; auto: agents up to {AGENT_MODE_MAX} devices in one process, else lean.",
)
@click.option(
    "--processes", default=1, show_default=True, type=click.IntRange(min=1), help="Worker processes (lean mode)."
)
@click.option(
    "--probation-seconds",
    type=click.FloatRange(min=0.1),
    help=f"Commit a new model after this long on probation (default {SIM_PROBATION.seconds:g}, "
    f"or {SIM_PROBATION.min_inferences} inferences).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
def simulate_command(
    devices: int, fleet: str, broker: str, bundle: Path, trust: tuple[Path, ...], skus: str, faults: tuple[str, ...],
    offline_rate: float, duration: float | None, telemetry_interval: float, replay_rate: float, workdir: Path | None,
    mode: str, processes: int, probation_seconds: float | None, as_json: bool,
) -> None:  # fmt: skip
    """Run N simulated devices with the real device-agent code, with injected faults.

    Each device has its own home, MQTT session, update pipeline and telemetry; inference runs in
    the bundle's real runtime. Faults: `selftest` (the release's self-test fails on that sku),
    `slow` (inference gets slower: probation's latency gate trips), `crash` (the device dies while
    installing, reboots, and gives up after repeated crashes).

    Lean mode (thousands of devices, `--processes K`) runs the same agent and updater code per device,
    but multiplexes a process's MQTT connections on one thread, runs the devices' work on a shared
    thread pool, and shares one loaded runtime per model per process (each device still verifies
    every bundle itself). See docs/operations.md.
    """
    import json

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("edge-agent").setLevel(logging.WARNING)
    config = SimulationConfig(
        devices=devices, fleet=fleet, broker=broker, bundle=bundle, trust=list(trust),
        skus=tuple(s.strip() for s in skus.split(",") if s.strip()), faults=tuple(Fault.parse(f) for f in faults),
        offline_rate=offline_rate, workdir=workdir, telemetry_interval_s=telemetry_interval, replay_rate=replay_rate,
    )  # fmt: skip
    if probation_seconds is not None:
        config.probation = replace(config.probation, seconds=probation_seconds)
    chosen = pick_mode(mode, devices, processes)
    click.echo(
        f"simulating {devices} devices of fleet {fleet} on {broker}, {chosen} mode"
        + (f" in {processes} processes" if chosen == "lean" else "")
        + " (Ctrl-C to stop)",
        err=True,
    )
    summary = run_simulation(config, duration, mode=chosen, processes=processes)
    click.echo(
        json.dumps(summary)
        if as_json
        else f"versions {summary['versions']}, states {summary['states']}, crashes {summary['crashes']}"
    )
