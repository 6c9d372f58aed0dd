"""Rollout benchmarks: 1,000 and 10,000 simulated devices, a real Mosquitto, a real ``fleetctl serve``.

Everything is a separate process on this machine: ``mosquitto``; ``fleetctl serve`` (SQLite store on
disk, MQTT ingest, rollout runner, uvicorn serving the artifacts); the lean simulator
(``fleetctl simulate --mode lean``) in ``PROCESSES`` worker processes, every device with its own MQTT
connection, device home (on tmpfs) and the real agent update code. Two rollouts per fleet size, each
in 4 stages with zero bake:

1. a clean release: wall time from ``rollout start`` (the API call) to the rollout SUCCEEDED, and the
   same from the server's own timestamps;
   Then ``fleetctl rollback`` of that completed release: from the API call until the fleet manager has
   ingested every device's ROLLED_BACK event (each names the version the device runs again);
2. a release whose self-test fails on one of the 3 skus: the failure gate trips (10%), the rollout
   aborts and the fleet manager rolls back every device that switched. Measured: from the trip (the
   audit log's ABORTED transition) until no device reports the release any more (``/devices``: every
   device's retained info names its previous version) and every deployment is settled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.bundle import PrivateKey
from device_agent.config import ProbationSection
from fleet.broker import LocalBroker, free_port, start_mosquitto, wait_for_port
from fleet.client import ApiClient
from fleet.sim.config import Fault, SimulationConfig
from fleet.sim.procs import LeanSimulation
from toolchain.packaging import PackageOptions, package

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "build" / "bench-models" / "tiny"
FLEET = "bench"
SKUS = ("pi4", "jetson", "esp")
STAGES = ["5%", "25%", "50%", "100%"]
PROBATION_S = 2.0  # seconds a device keeps a new model on probation before committing it
TELEMETRY_S = 60.0  # long: this measures rollouts, the ingest bench measures telemetry
REPLAY_RATE = 0.1  # inferences per second per device (real LiteRT, shared per process)
TOKEN = "bench-token-0123456789"  # serve needs 16 characters at least


@dataclass
class RolloutResult:
    devices: int
    processes: int
    clean_s: float  # client: POST /rollouts until the poll sees SUCCEEDED
    clean_server_s: float  # server: rollout created_at → last transition
    clean_state: str
    clean_reason: str
    trip_stage: int
    changed: int  # devices that had switched to the faulty release and were rolled back
    failed_selftest: int
    rollback_s: float  # trip → no device reports the faulty release, every deployment settled
    fault_state: str
    stages: list[float]  # clean rollout: seconds from start to the end of each stage
    cpu: dict[str, float]  # clean rollout: CPU seconds used by serve, the simulator and mosquitto
    undo_s: float  # `fleetctl rollback` of the completed release → every device's ROLLED_BACK ingested
    undone: int
    load: float  # 1-minute load average at the end (other work on this shared machine)


def tiny_model() -> dict[str, Path]:
    if not (TINY / "model.tflite").exists():
        subprocess.run(
            [sys.executable, "-m", "models", "build", "tiny-digits", "--out", str(TINY)],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
    return {"tflite": TINY / "model.tflite", "labels": TINY / "labels.txt", "calibration": TINY / "calib.npz"}


def bundle(tiny: dict[str, Path], key: PrivateKey, version: str, sequence: int, out: Path) -> Path:
    opts = PackageOptions(
        name="digits",
        version=version,
        sequence=sequence,
        keys=[key],
        labels=tiny["labels"],
        calibration=tiny["calibration"],
    )
    path = out / f"digits-{version}.efb"
    path.write_bytes(package(tiny["tflite"], opts))
    return path


def serve(broker: LocalBroker, tmp: Path, pub: Path) -> tuple[subprocess.Popen[bytes], ApiClient]:
    port = free_port()
    cmd = [
        sys.executable,
        "-c",
        "from fleet.cli import main; main()",
        "serve",
        "--db",
        f"sqlite:///{tmp / 'fleet.db'}",
        "--broker",
        broker.url,
        "--artifacts",
        str(tmp / "artifacts"),
        "--listen",
        f"127.0.0.1:{port}",
        "--trust",
        str(pub),
        "--fleet",
        FLEET,
        "--token",
        TOKEN,
    ]
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_for_port("127.0.0.1", port, 60, proc)  # type: ignore[arg-type]
    return proc, ApiClient(f"http://127.0.0.1:{port}", TOKEN, timeout=120)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds consumed so far by these processes (all their threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def wait(predicate: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


def online(api: ApiClient, n: int) -> bool:
    devices = api.get("/devices")
    return sum(1 for d in devices if d["status"] == "online" and d["model_version"]) >= n


def start_rollout(api: ApiClient, release: str, n: int) -> tuple[int, float]:
    body = {
        "release": release,
        "stages": STAGES,
        "gates": {
            "bake_s": 0,
            "max_concurrent": n,
            "failure": "10%",
            "retries": 0,
            "max_psi": 1e9,
            "max_p95_ratio": 1e9,
        },
    }
    t0 = time.time()
    return api.post("/rollouts", body)["id"], t0


def ended(api: ApiClient, rid: int) -> dict[str, Any] | None:
    """The rollout's row once it has ended (the cheap list endpoint: polling must not load the server)."""
    row: dict[str, Any] = next(r for r in api.get("/rollouts") if r["id"] == rid)
    return row if row["state"] in ("SUCCEEDED", "ABORTED", "ROLLED_BACK") else None


def stage_times(api: ApiClient, rid: int, start: float) -> list[float]:
    """Seconds from ``start`` to the end of each stage (its 'deployed' transition), from the audit log."""
    audit = sorted(api.get(f"/rollouts/{rid}/audit"), key=lambda a: a["ts"])
    return [round(a["ts"] - start, 1) for a in audit if "deployed" in a["detail"] or "tripped" in a["detail"]]


def sim_config(n: int, broker_url: str, initial: Path, pub: Path) -> SimulationConfig:
    return SimulationConfig(
        devices=n,
        fleet=FLEET,
        broker=broker_url,
        bundle=initial,
        trust=[pub],
        skus=SKUS,
        faults=(Fault.parse("digits@3.0.0:esp=selftest"),),
        telemetry_interval_s=TELEMETRY_S,
        replay_rate=REPLAY_RATE,
        probation=ProbationSection(min_inferences=1000, seconds=PROBATION_S),
    )


@dataclass
class _Clean:
    rid: int
    row: dict[str, Any]
    seconds: float
    cpu: dict[str, float]
    undo_s: float
    undone: list[dict[str, Any]]


@dataclass
class _Faulty:
    row: dict[str, Any]
    trip: dict[str, Any]
    deps: list[dict[str, Any]]


def clean_rollout(api: ApiClient, sim: LeanSimulation, n: int, pids: dict[str, list[int]]) -> _Clean:
    """Roll 2.0.0 out to every device (CPU measured meanwhile), then an operator rolls it back everywhere."""
    cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
    rid, t0 = start_rollout(api, "digits@2.0.0", n)
    print(f"{n} devices: clean rollout started", file=sys.stderr, flush=True)
    clean = wait(lambda: ended(api, rid), 600, "the clean rollout")
    clean_s = time.time() - t0
    cpu = {k: round(cpu_seconds(v) - cpu0[k], 1) for k, v in pids.items()}
    print(f"{n} devices: CPU seconds during the clean rollout {cpu}", file=sys.stderr, flush=True)
    print(f"{n} devices: clean rollout {clean['state']} in {clean_s:.1f} s: {clean['reason']}", file=sys.stderr)
    wait(lambda: sim.summary()["versions"].get("2.0.0") == n or None, 120, "every device on 2.0.0")
    undo_t0 = time.time()  # an operator rolls the completed release back on every device
    api.post("/rollback", {"release": "digits@2.0.0"})
    undone = wait(lambda: settled(api, rid), 600, "the operator rollback", every=1.0)
    undo_s = max(d["finished_at"] for d in undone) - undo_t0
    wait(lambda: sim.summary()["versions"].get("1.0.0") == n or None, 120, "every device on 1.0.0")
    return _Clean(rid, clean, clean_s, cpu, undo_s, undone)


def faulty_rollout(api: ApiClient, n: int) -> _Faulty:
    """Roll 3.0.0 out: its self-test fails on the esp sku, the gate trips, the changed devices roll back."""
    rid3, _ = start_rollout(api, "digits@3.0.0", n)
    fault = wait(lambda: ended(api, rid3), 600, "the faulty rollout")
    print(f"{n} devices: faulty rollout {fault['state']}: {fault['reason']}", file=sys.stderr)
    trip = next(a for a in api.get(f"/rollouts/{rid3}/audit") if "→ ABORTED" in a["detail"])
    deps = wait(lambda: settled(api, rid3), 600, "every deployment settled", every=1.0)
    wait(
        lambda: not any(d["model_version"] == "3.0.0" for d in api.get("/devices")),
        120,
        "no device on 3.0.0",
        every=1.0,
    )
    return _Faulty(fault, trip, deps)


def measure(n: int, processes: int, tiny: dict[str, Path], work: Path) -> RolloutResult:
    key = PrivateKey.generate()
    _, pub = key.save(work / "keys" / "release")
    v1, v2, v3 = (bundle(tiny, key, f"{i}.0.0", i, work) for i in (1, 2, 3))
    with start_mosquitto(workdir=work / "broker") as broker:
        server, api = serve(broker, work, pub)
        sim = LeanSimulation(sim_config(n, broker.url, v1, pub), processes)
        try:
            sim.start(timeout=120 + n / 20)
            wait(lambda: online(api, n), 120 + n / 50, f"{n} devices registered", every=1.0)
            for path in (v2, v3):
                api.add_release(path)
            pids = {"serve": [server.pid], "simulator": sim.pids(), "mosquitto": [broker.process.pid]}
            clean = clean_rollout(api, sim, n, pids)
            faulty = faulty_rollout(api, n)
            load = os.getloadavg()[0]
            stages = stage_times(api, clean.rid, clean.row["created_at"])
        finally:
            sim.stop()
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    return result(n, processes, clean, faulty, stages, load)


def result(n: int, processes: int, clean: _Clean, faulty: _Faulty, stages: list[float], load: float) -> RolloutResult:
    back = [d for d in faulty.deps if d["state"] == "ROLLED_BACK" and d["reason"] == "requested"]
    return RolloutResult(
        devices=n,
        processes=processes,
        clean_s=clean.seconds,
        clean_server_s=clean.row["updated_at"] - clean.row["created_at"],
        clean_state=clean.row["state"],
        clean_reason=clean.row["reason"],
        trip_stage=faulty.row["stage"] + 1,
        changed=len(back),
        failed_selftest=sum(1 for d in faulty.deps if d["reason"] == "selftest"),
        rollback_s=max(d["finished_at"] for d in back) - faulty.trip["ts"] if back else 0.0,
        fault_state=faulty.row["state"],
        stages=stages,
        cpu=clean.cpu,
        undo_s=clean.undo_s,
        undone=len(clean.undone),
        load=load,
    )


def settled(api: ApiClient, rid: int) -> list[dict[str, Any]] | None:
    """The deployments once none can change any more (a switched device is rolled back: ROLLED_BACK)."""
    deps: list[dict[str, Any]] = api.get(f"/rollouts/{rid}/deployments")
    return deps if all(d["state"] in ("ROLLED_BACK", "REJECTED", "FAILED") for d in deps) else None


def run_sizes(sizes: tuple[tuple[int, int], ...]) -> list[RolloutResult]:
    tiny = tiny_model()
    results = []
    for n, processes in sizes:
        with tempfile.TemporaryDirectory(prefix=f"edgefleet-bench-{n}-") as tmp:
            results.append(measure(n, processes, tiny, Path(tmp)))
    return results


def report(results: list[RolloutResult]) -> str:
    rows = [
        f"| {r.devices:,} | {r.processes} | {r.clean_state} | **{r.clean_s:.1f} s** ({r.clean_server_s:.1f} s) | "
        f"{' / '.join(f'{t:.1f}' for t in r.stages)} | {r.cpu['serve']:.0f} + {r.cpu['simulator']:.0f} + "
        f"{r.cpu['mosquitto']:.0f} s | {r.load:.1f} | {r.undone:,} in **{r.undo_s:.1f} s** | "
        f"{r.fault_state} in stage {r.trip_stage} | {r.failed_selftest} | {r.changed} | **{r.rollback_s:.2f} s** |"
        for r in results
    ]
    return "\n".join(
        [
            "Rollouts through a real Mosquitto: `fleetctl serve` (SQLite on disk, tick 0.5 s) as a subprocess, and "
            f"the lean simulator (`fleetctl simulate --mode lean`) in K worker processes; 3 skus; stages "
            f"{', '.join(STAGES)} with zero bake, max concurrent = fleet size; probation {PROBATION_S:g} s on the "
            f"devices, telemetry every {TELEMETRY_S:g} s, {REPLAY_RATE:g} inferences/s per device in real LiteRT "
            "(one interpreter per model per simulator process, shared by its devices; every device verifies every "
            "bundle itself). The faulty release fails its self-test on one sku; the failure gate (10%) trips. "
            "The health gate compares error rate and confidence as usual; its drift and latency-ratio limits are "
            "lifted: the simulator replays the bundle's 8 self-test inputs, whose histograms are far from the "
            "calibration set's (PSI ≈ 4 for any release), and a latency measured in a process shared by thousands "
            "of devices measures that process's load (GIL, shared interpreter), not the model.\n",
            "| devices | K | clean release | start → completed (server) | stages done at (s) "
            "| CPU: serve + simulator + mosquitto | load average after | `fleetctl rollback` of the completed "
            "release: devices, time until all back | faulty release "
            "| self-test failures | devices switched, then rolled back | gate trip → every device back on its previous "
            "version |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Targets: 10,000 devices rolled out in ≤ 60 s; all changed devices back on the previous "
            "version ≤ 10 s after a gate trips. Each stage waits for every device of the stage to commit (probation), "
            "so 4 stages cost at least 4 × probation. Rollback times run from the gate's trip (the audit log's "
            "ABORTED transition) or the rollback call to the last device's ROLLED_BACK event as the fleet manager "
            "ingested it (its retained info names the previous version at the same moment); every device is then "
            "also checked to report the previous version. CPU seconds are those of the clean rollout; the machine is "
            "shared with other work (load average), so wall times vary from run to run.",
        ]
    )


if __name__ == "__main__":  # python -m bench.fleet_rollout N K
    out = run_sizes(((int(sys.argv[1]), int(sys.argv[2])),))
    print(report(out))
