"""Crash safety: kill -9 the `fleetctl serve` process at several points of a running rollout, restart
it on the same store: the rollout resumes, no device acts on a deployment twice, no stage is skipped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from device_agent import protocol as P
from device_agent.bundle import PrivateKey
from fleet.broker import LocalBroker, free_port
from fleet.client import ApiClient
from fleet.errors import ApiError
from tests.support.fleet_harness import TOKEN, wait_until
from tests.support.scripted_device import ScriptedDevice, start_fleet

OLD = P.ModelRef("digits", "1.0.0", 1, "1" * 64)
FLEETCTL = str(Path(sys.executable).parent / "fleetctl")


class ServeProcess:
    def __init__(self, broker: LocalBroker, tmp: Path, pub: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        token_file = tmp / "bootstrap.token"  # the secret in a file, not on the command line (ps)
        token_file.write_text(f"# bootstrap admins\nalice={TOKEN}\n")
        token_file.chmod(0o600)
        self.args = [
            FLEETCTL,
            "serve",
            "--db",
            f"sqlite:///{tmp / 'fleet.db'}",
            "--broker",
            broker.url,
            "--artifacts",
            str(tmp / "artifacts"),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--trust",
            str(pub),
            "--token-file",
            str(token_file),
        ]
        assert TOKEN not in " ".join(self.args)
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log)
        wait_until(self._up, 30, f"fleetctl serve to answer (log: {self.log})")

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


def test_kill_9_mid_rollout_resumes_without_duplicates_or_skipped_stages(
    broker: LocalBroker, tmp_path: Path, key_files: tuple[Path, Path], release_key: PrivateKey
) -> None:
    from tests.support.bundles import simple_bundle

    serve = ServeProcess(broker, tmp_path, key_files[1])
    serve.start()
    api = ApiClient(serve.url, TOKEN)
    devices = start_fleet(broker.url, "default", {"pi4": 8, "jetson": 8, "esp": 8}, OLD, step_delay=0.1)
    try:
        wait_until(lambda: sum(1 for d in api.get("/devices") if d["sku"]) == 24, what="devices registered")
        (tmp_path / "d.efb").write_bytes(simple_bundle(release_key, version="2.0.0", sequence=2))
        api.add_release(tmp_path / "d.efb")
        rid = api.post(
            "/rollouts",
            {"release": "digits@2.0.0", "stages": ["10%", "40%", "70%", "100%"], "gates": {"max_concurrent": 3}},
        )["id"]

        def status() -> dict[str, object]:
            try:
                return api.get(f"/rollouts/{rid}")  # type: ignore[no-any-return]
            except ApiError:
                return {}

        _kill_9_in_stages_1_to_3(serve, status)
        final = wait_until(lambda: (st := status()) and st["state"] in ("SUCCEEDED", "ABORTED") and st, 90, "the end")
        assert final["state"] == "SUCCEEDED", final["reason"]
        _assert_each_device_acted_once(api, rid, devices, serve.kills)
        audit = [
            a["detail"].split(": ", 1)[1]
            for a in reversed(api.get(f"/rollouts/{rid}/audit"))
            if a["action"] == "rollout.transition"
        ]
        stages = [f"stage {i} {w}" for i in (1, 2, 3) for w in ("deployed", "baked")]
        assert audit == [*stages, "stage 4 deployed", "last stage baked"]
        assert serve.kills == 3
    finally:
        for d in devices:
            d.stop()
        serve.stop()


def _kill_9_in_stages_1_to_3(serve: ServeProcess, status: Callable[[], dict[str, Any]]) -> None:
    """Kill points: stage 1 under way, stage 2 under way, stage 3 half done; each followed by a restart."""
    for stage, min_deployments in ((0, 1), (1, 5), (2, 13)):
        wait_until(
            lambda s=stage, n=min_deployments: (
                (st := status()) and st["stage"] >= s and sum(st["progress"].values()) - st["progress"]["targeted"] >= n
            ),
            60,
            f"stage {stage + 1} under way",
        )
        serve.kill9()
        serve.start()


def _assert_each_device_acted_once(api: ApiClient, rid: int, devices: list[ScriptedDevice], kills: int) -> None:
    deployments = api.get(f"/rollouts/{rid}/deployments")
    assert len(deployments) == 24 and {d["state"] for d in deployments} == {"SUCCEEDED"}
    assert Counter(d["stage"] for d in deployments) == {0: 3, 1: 7, 2: 7, 3: 7}  # every stage, in its size
    resent = 0
    for dev in devices:
        deploys = [c["deployment_id"] for kind, c in dev.received if kind == P.CMD_DEPLOY]
        assert len(dev.acted_on) == 1 and set(deploys) == set(dev.acted_on), dev.device_id
        assert dev.model.version == "2.0.0"
        resent += len(deploys) - 1
    # a kill between publishing a batch of deploys and recording it sent re-publishes that batch (at most
    # max_concurrent = 3 commands) under the SAME ids (devices act once)
    assert resent <= 3 * kills
    print(f"kills={kills} devices acting twice=0 same-id re-publishes={resent}")


def test_sigterm_stops_serve_warmly_with_its_local_broker(tmp_path: Path, key_files: tuple[Path, Path]) -> None:
    """Without --broker, serve starts a local broker; SIGTERM exits 0 and stops that broker too."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                FLEETCTL,
                "serve",
                "--db",
                f"sqlite:///{tmp_path / 'f.db'}",
                "--listen",
                f"127.0.0.1:{port}",
                "--trust",
                str(key_files[1]),
                "--artifacts",
                str(tmp_path / "a"),
                "--token",
                TOKEN,
            ],
            stdout=fh,
            stderr=fh,
        )
    try:
        wait_until(lambda: "serving fleet default" in log.read_text(), 30, "serve to start")
        broker_port = int(log.read_text().split("broker at mqtt://127.0.0.1:")[1].split()[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", broker_port)) != 0  # the local broker is gone
    finally:
        if proc.poll() is None:
            proc.kill()
