"""Run a simulation of either kind (full agents, or lean devices in worker processes) and report on it."""

from __future__ import annotations

import logging
import time
from typing import Any

from device_agent.errors import ConfigError
from fleet.sim.agents import Simulation
from fleet.sim.config import SimulationConfig
from fleet.sim.procs import LeanSimulation

log = logging.getLogger("fleetctl.simulate")


def run_simulation(
    config: SimulationConfig,
    duration_s: float | None,
    report_every_s: float = 10.0,
    mode: str = "agents",
    processes: int = 1,
) -> dict[str, Any]:
    """Provision, start, report every ``report_every_s`` until ``duration_s`` (None: until Ctrl-C), stop."""
    if mode == "lean":
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
