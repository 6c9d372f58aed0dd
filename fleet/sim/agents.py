"""Full-agent simulation: every simulated device is a real, threaded ``device_agent.agent.Agent``.

Each device has its own home (provisioned like ``edgetool flash`` does), its own MQTT connection and
session, the real update pipeline (download, verify, install, self-test, probation, rollback) and real
telemetry. Inference runs in the real runtime of the bundle (LiteRT or ONNX Runtime), fed by the
bundle's self-test inputs. Only the faults are injected (``fleet.sim.faults``, through the agent's
update hooks and an MQTT client with outages), and outages (``offline_rate``).

Threads per device: the agent's loop, its deployment worker, its replay source and paho's network
thread; a few hundred devices per process is comfortable.
"""

from __future__ import annotations

import random
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_agent.agent import Agent
from device_agent.config import load_config
from device_agent.core import AgentParts
from device_agent.errors import ConfigError
from device_agent.home import Home
from device_agent.session import mqtt_config
from fleet.sim.config import SimulationConfig, provision_device
from fleet.sim.faults import DeviceCrashed, FaultHooks, FaultPlan, OutageBackoff, OutageClient, fault_plan
from fleet.sim.report import count_agents


def faulty_agent(home: Home, faults: FaultPlan, *, api: bool = True) -> tuple[Agent, OutageClient]:
    """A real ``Agent`` for ``home`` with ``faults`` injected and an MQTT client that can go offline."""
    config = load_config(home.config)
    parts = AgentParts(hooks=FaultHooks(faults))
    mqtt = OutageClient(mqtt_config(config))
    b = config.broker
    backoff = OutageBackoff(b.reconnect_min_s, b.reconnect_max_s, mqtt.outage)
    return Agent(home, config, parts=parts, api=api, mqtt=mqtt, backoff=backoff), mqtt


@dataclass
class _Device:
    id: str
    sku: str
    home: Home
    agent: Agent | None = None
    thread: threading.Thread | None = None
    mqtt: OutageClient | None = None
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
        return fault_plan(self.config, device.sku, lambda: self._crash(device), device.id)

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
        agent, mqtt = faulty_agent(device.home, self._faults(device), api=False)
        agent.start()
        thread = threading.Thread(target=agent.run, name=f"sim-{device.id}", daemon=True)
        thread.start()
        device.agent, device.thread, device.mqtt = agent, thread, mqtt

    def _crash(self, device: _Device) -> None:
        """Called from the device's deployment worker: kill that device only, reboot it shortly after."""
        device.crashes += 1
        agent, thread, mqtt = device.agent, device.thread, device.mqtt

        def reboot() -> None:
            if agent is not None and mqtt is not None:
                mqtt.go_offline(float("inf"))  # the connection drops without a goodbye: the broker sends the will
                agent.stop()
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
                if device.mqtt is not None and self._rng.random() < self.config.offline_rate / 12.5:
                    device.mqtt.go_offline(self._rng.uniform(5.0, 20.0))

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
        versions, states = count_agents(d.agent.core if d.agent else None for d in self.devices.values())
        return {
            "devices": len(self.devices),
            "versions": versions,
            "states": states,
            "crashes": sum(d.crashes for d in self.devices.values()),
        }
