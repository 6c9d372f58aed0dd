"""Lean simulation processes: ``Worker`` (the lean devices of one process) and ``LeanSimulation``, which
splits the devices of ``fleetctl simulate --mode lean`` over ``processes`` worker processes
(``multiprocessing``, spawn) and talks to them over pipes (ready, summary, stop)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from device_agent.agent import PROBATION_CHECK_S
from device_agent.config import load_config
from device_agent.errors import ConfigError, EdgefleetError
from device_agent.fetch import FetchConfig
from device_agent.home import Home
from device_agent.mqtt.mux import MqttMux
from fleet.sim.config import SimulationConfig, provision_device
from fleet.sim.faults import DeviceCrashed, fault_plan
from fleet.sim.fetch import KeepAliveHttpFetcher
from fleet.sim.lean import CONNECTS_PER_S, LeanDevice, SharedModels, WorkerContext
from fleet.sim.report import count_agents, merge_summaries

log = logging.getLogger("fleetctl.simulate")
POOL_THREADS = 16  # per process: downloads and fsyncs wait; more strands in flight hide that latency


class Worker:
    """The devices of one process (every ``processes``-th device from ``index``)."""

    def __init__(self, config: SimulationConfig, root: Path, index: int = 0, processes: int = 1) -> None:
        self.config, self.root = config, root
        self.ids = [i for i in range(config.devices) if i % processes == index]
        self.ctx = WorkerContext(
            mux=MqttMux(f"sim-mux-{index}"),
            pool=ThreadPoolExecutor(POOL_THREADS, thread_name_prefix=f"sim-{index}"),
            models=SharedModels(),
            fetcher=KeepAliveHttpFetcher(FetchConfig(timeout_s=60.0, retries=5, backoff_s=0.5)),
            replay_rate=config.replay_rate,
            rng=random.Random(config.seed * 1000 + index),
        )
        self.homes: dict[str, tuple[str, Home]] = {}
        self.agents: dict[str, LeanDevice] = {}
        self.crashes = 0

    def provision(self) -> None:
        for i in self.ids:
            device_id, sku, home = provision_device(self.config, self.root, i)
            self.homes[device_id] = (sku, home)

    def start(self) -> None:
        self.ctx.mux.start()
        for k, device_id in enumerate(self.homes):
            agent = self._new_agent(device_id)
            self.agents[device_id] = agent
            agent.begin(connect_delay=k / CONNECTS_PER_S)
        self.ctx.mux.call_later(PROBATION_CHECK_S, self._probation_sweep)
        if self.config.offline_rate > 0:
            self.ctx.mux.call_later(1.0, self._outages)

    def _new_agent(self, device_id: str) -> LeanDevice:
        sku, home = self.homes[device_id]
        faults = fault_plan(self.config, sku, lambda: self._crash(device_id), device_id)
        return LeanDevice(home, load_config(home.config), self.ctx, faults)

    def _crash(self, device_id: str) -> None:
        """From the device's deployment strand: the device dies here and reboots a second later."""
        self.crashes += 1
        self.agents[device_id].end(goodbye=False)
        self.ctx.mux.call_later(1.0, lambda: self._loop_reboot(device_id))
        raise DeviceCrashed

    def _loop_reboot(self, device_id: str) -> None:
        self.ctx.pool.submit(self._reboot, device_id)

    def _reboot(self, device_id: str) -> None:
        agent = self._new_agent(device_id)
        self.agents[device_id] = agent
        try:
            agent.begin()
        except EdgefleetError as exc:
            log.error("%s does not boot: %s", device_id, exc)

    def _probation_sweep(self) -> None:
        for agent in self.agents.values():
            agent.check_probation_soon()
        self.ctx.mux.call_later(PROBATION_CHECK_S, self._probation_sweep)

    def _outages(self) -> None:
        """As ``Simulation._outages``: about ``offline_rate`` of the devices offline, for 5-20 s each."""
        rng = self.ctx.rng
        for agent in self.agents.values():
            if agent.alive and agent.mqtt.is_connected and rng.random() < self.config.offline_rate / 12.5:
                agent.go_offline(rng.uniform(5.0, 20.0))
        self.ctx.mux.call_later(1.0, self._outages)

    def connected(self) -> int:
        return sum(1 for a in self.agents.values() if a.ever_connected and a.mqtt.is_connected)

    def summary(self) -> dict[str, Any]:
        versions, states = count_agents(a.core for a in self.agents.values())
        return {
            "devices": len(self.agents),
            "versions": versions,
            "states": states,
            "crashes": self.crashes,
            "connected": self.connected(),
        }

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.end()
        flushed = threading.Event()
        self.ctx.mux.call_later(0.5, flushed.set)  # after the goodbyes queued before it
        flushed.wait(30)
        self.ctx.mux.stop()
        self.ctx.pool.shutdown(wait=False, cancel_futures=True)


def _worker_main(config: SimulationConfig, root: str, index: int, processes: int, conn: Any) -> None:
    """One worker process: provision, start, answer ``summary``/``stop`` requests from the parent."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s sim-{index} %(message)s")
    try:
        worker = Worker(config, Path(root), index, processes)
        worker.provision()
        worker.start()
    except (EdgefleetError, OSError) as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    ready = False
    while True:
        if not ready and all(a.ever_connected for a in worker.agents.values()):
            ready = True
            conn.send(("ready", len(worker.agents)))
        if not conn.poll(0.2):
            continue
        request = conn.recv()
        if request == "summary":
            conn.send(("summary", worker.summary()))
        elif request == "stop":
            summary = worker.summary()
            worker.stop()
            conn.send(("stopped", summary))
            return


class LeanSimulation:
    """``config.devices`` lean devices in ``processes`` worker processes."""

    def __init__(self, config: SimulationConfig, processes: int = 1) -> None:
        if processes < 1:
            raise ConfigError("--processes must be at least 1")
        self.config = config
        self.processes = min(processes, config.devices)
        self._owned: tempfile.TemporaryDirectory[str] | None = None
        self._workers: list[tuple[Any, Any]] = []

    def start(self, timeout: float | None = None) -> None:
        """Start the workers and wait until every device is connected and announced.

        Raises: ConfigError (a worker could not start its devices), TimeoutError.
        """
        if self.config.workdir is None:
            scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None  # state writes are fsynced: tmpfs
            self._owned = tempfile.TemporaryDirectory(prefix="edgefleet-sim-", dir=scratch)
            root = Path(self._owned.name)
        else:
            root = self.config.workdir
        ctx = mp.get_context("spawn")
        for k in range(self.processes):
            parent, child = ctx.Pipe()
            args = (self.config, str(root), k, self.processes, child)
            proc = ctx.Process(target=_worker_main, args=args, name=f"sim-worker-{k}", daemon=True)
            proc.start()
            self._workers.append((proc, parent))
        deadline = time.monotonic() + (timeout or 60.0 + self.config.devices / 50)
        for proc, conn in self._workers:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                self.stop()
                raise TimeoutError(f"simulated devices not all connected after {timeout} s")
            kind, detail = conn.recv()
            if kind == "error":
                self.stop()
                raise ConfigError(f"simulator worker {proc.name}: {detail}")

    def pids(self) -> list[int]:
        """The worker processes' ids (for CPU accounting)."""
        return [proc.pid for proc, _ in self._workers if proc.pid is not None]

    def summary(self) -> dict[str, Any]:
        parts = []
        for _, conn in self._workers:
            conn.send("summary")
            parts.append(conn.recv()[1])
        return merge_summaries(parts)

    def stop(self) -> dict[str, Any]:
        """Stop every worker (devices say goodbye); returns the last summary."""
        parts = []
        for proc, conn in self._workers:
            if proc.is_alive():
                try:
                    conn.send("stop")
                    while (reply := conn.recv())[0] != "stopped":
                        pass
                    parts.append(reply[1])
                except (EOFError, OSError):
                    pass
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
        self._workers = []
        if self._owned is not None:
            self._owned.cleanup()
            self._owned = None
        return merge_summaries(parts)
