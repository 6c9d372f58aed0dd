"""Real parts for the agent tests: an HTTP artifact server with Range, device homes, agents, watchers."""

from __future__ import annotations

import hashlib
import io
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from device_agent import protocol as P
from device_agent.agent import Agent
from device_agent.bundle import PrivateKey, read_bundle
from device_agent.bundle.writer import build_bundle
from device_agent.config import ProbationSection, load_config
from device_agent.home import Home
from device_agent.mqtt import MqttClient, MqttConfig
from fleet.sim.agents import faulty_agent
from fleet.sim.faults import FaultPlan, OutageClient
from toolchain.flash import FlashOptions, flash
from toolchain.npzio import save_npz
from toolchain.packaging import PackageOptions, package

TERMINAL = frozenset(
    {P.DeploymentState.SUCCEEDED, P.DeploymentState.FAILED, P.DeploymentState.REJECTED, P.DeploymentState.ROLLED_BACK}
)
FAST_PROBATION = ProbationSection(min_inferences=30, seconds=30.0, max_error_rate=0.05, max_latency_ratio=0.0)


class ArtifactServer:
    """Serves files from a directory over real HTTP, honouring ``Range: bytes=N-``.

    ``drop_after`` makes the first full response stop after that many bytes (a broken connection),
    so resumption can be tested; ``requests`` records (path, range header) of every request.
    """

    def __init__(self, root: Path, drop_after: int | None = None, throttle_bps: float | None = None) -> None:
        self.root = root
        self.drop_after = drop_after
        self.throttle_bps = throttle_bps
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = int(m.group(1)) if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng)) else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.drop_after is not None and not start:
                    body, server.drop_after = body[: server.drop_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.connection.close()
                    return
                step = 1024 if server.throttle_bps else 64 * 1024
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    if server.throttle_bps:
                        time.sleep(step / server.throttle_bps)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def publish(self, name: str, data: bytes) -> tuple[str, str, int]:
        """Place ``data`` as ``name``; returns (url, sha256, size) for a cmd/deploy."""
        (self.root / name).write_bytes(data)
        return self.url(name), hashlib.sha256(data).hexdigest(), len(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def package_tiny(tiny: dict[str, Path], key: PrivateKey, version: str, sequence: int, kind: str = "tflite") -> bytes:
    opts = PackageOptions(
        name="digits",
        version=version,
        sequence=sequence,
        keys=[key],
        labels=tiny["labels"],
        calibration=tiny["calibration"],
    )
    return package(tiny[kind], opts)


def with_bad_selftest(bundle: bytes, key: PrivateKey, version: str, sequence: int) -> bytes:
    """A correctly signed bundle whose reference outputs do not match what its model computes."""
    b = read_bundle(bundle)
    files = b.files
    with np.load(io.BytesIO(files["selftest.npz"])) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["out0"] = np.roll(arrays["out0"], 1, axis=1)  # expected top-1 shifted by one class
    files["selftest.npz"] = save_npz(arrays)
    manifest = replace(b.manifest, version=version, sequence=sequence)
    return build_bundle(manifest, files, [key])


def flash_device(tmp: Path, bundle: bytes, broker_url: str, pub: Path, device_id: str = "dev-1", **extra: Any) -> Home:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{device_id}-initial.efb"
    path.write_bytes(bundle)
    sections = {"probation": extra.pop("probation", FAST_PROBATION)} | extra.pop("sections", {})
    opts = FlashOptions(
        device_id=device_id,
        broker=broker_url,
        trust=[] if extra.get("trust_metadata") else [pub],
        fleet="test",
        sku=extra.pop("sku", "test-sku"),
        telemetry_interval_s=extra.pop("telemetry_interval_s", 0.5),
        replay_rate=extra.pop("replay_rate", 50.0),
        extra=sections,
        **extra,
    )
    return flash(path, tmp / device_id, opts)


class AgentThread:
    """A real Agent running its supervisor loop in a thread of the test process.

    With ``faults`` or ``outages``, the agent is the simulator's (``fleet.sim.agents.faulty_agent``): its
    update hooks inject ``faults`` and ``go_offline`` can take it off the broker for a while.
    """

    def __init__(self, home: Home, faults: FaultPlan | None = None, outages: bool = False) -> None:
        self.mqtt: OutageClient | None = None
        if faults is None and not outages:
            self.agent = Agent(home, load_config(home.config))
        else:
            self.agent, self.mqtt = faulty_agent(home, faults or FaultPlan())
        self.agent.start()
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    def wait_connected(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not self.agent.mqtt.is_connected:
            if time.monotonic() > deadline:
                raise TimeoutError("agent did not connect to the broker")
            time.sleep(0.05)

    def go_offline(self, seconds: float) -> None:
        """Drop the broker connection abruptly and stay offline for ``seconds`` (needs ``outages``)."""
        if self.mqtt is None:
            raise RuntimeError("AgentThread(..., outages=True) first")
        self.mqtt.go_offline(seconds)

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(timeout=30)


@dataclass
class Watcher:
    """Subscribes to a fleet's device topics and keeps every parsed event/telemetry/status."""

    broker_url: str
    fleet: str = "test"
    events: list[P.DeploymentEvent] = field(default_factory=list)
    telemetry: list[tuple[str, P.Telemetry]] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = MqttClient(
            MqttConfig(url=self.broker_url, client_id=f"watcher-{uuid.uuid4().hex[:8]}", clean_start=True)
        )
        self.client.connect()
        self.client.subscribe([(P.subscription(self.fleet, "#"), 1)])

    def _pump(self, timeout: float) -> None:
        try:
            msg = self.client.messages.get(timeout=timeout)
        except queue.Empty:
            return
        t = P.parse_topic(msg.topic)
        if t.kind == P.EVENTS:
            self.events.append(P.DeploymentEvent.parse(msg.payload))
        elif t.kind == P.TELEMETRY:
            self.telemetry.append((t.device, P.Telemetry.parse(msg.payload)))
        elif t.kind == P.STATUS:
            self.status[t.device] = P.parse_status(msg.payload)

    def wait_event(self, deployment_id: str, states: set[P.DeploymentState], timeout: float = 60) -> P.DeploymentEvent:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events:
                if ev.deployment_id == deployment_id and ev.state in states:
                    return ev
            self._pump(0.1)
        seen = [(e.state.value, e.reason) for e in self.events if e.deployment_id == deployment_id]
        raise TimeoutError(f"no {sorted(s.value for s in states)} for {deployment_id}; saw {seen}")

    def wait(self, predicate: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met")
            self._pump(0.1)

    def drain(self, seconds: float = 0.3) -> None:
        """Take in everything that arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(0.05)

    def states(self, deployment_id: str) -> list[str]:
        return [e.state.value for e in self.events if e.deployment_id == deployment_id]

    def close(self) -> None:
        self.client.disconnect()


def send_deploy(broker_url: str, fleet: str, device: str, url: str, sha256: str, size: int) -> str:
    """Publish a cmd/deploy as the fleet manager would; returns the deployment id."""
    dep = f"dep-{uuid.uuid4().hex[:10]}"
    cmd = P.DeployCommand(
        request_id=f"req-{uuid.uuid4().hex[:10]}", deployment_id=dep, url=url, sha256=sha256, size=size
    )
    send_command(broker_url, fleet, device, cmd)
    return dep


def send_command(broker_url: str, fleet: str, device: str, cmd: P.Command) -> None:
    c = MqttClient(MqttConfig(url=broker_url, client_id=f"fm-{uuid.uuid4().hex[:8]}", clean_start=True))
    c.connect()
    try:
        c.publish(P.topic(fleet, device, cmd.kind), P.encode(cmd), qos=1)
    finally:
        c.disconnect()


def iter_chunks(data: bytes, n: int) -> Iterator[bytes]:
    for i in range(0, len(data), n):
        yield data[i : i + n]
