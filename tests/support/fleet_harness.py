"""Run a real fleet manager for tests: the store, MQTT ingest, runner, and uvicorn on a free port (in
threads of the test process), plus helpers to wait for conditions without timed assertions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from device_agent.bundle import PrivateKey
from fleet.api import create_app
from fleet.broker import free_port
from fleet.client import ApiClient
from fleet.server import FleetServer, ServeConfig
from tests.support.bundles import simple_bundle

TOKEN = "s3cret-token-for-tests"


@dataclass
class Harness:
    url: str
    server: FleetServer
    api: ApiClient  # with the token
    anonymous: ApiClient  # without


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds (a hang guard,
    not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def running_fleet(
    broker_url: str, tmp: Path, pub: Path, db: str | None = None, tick: float = 0.1, **config_kw: Any
) -> Iterator[Harness]:
    port = free_port()
    config = ServeConfig(
        db=db or f"sqlite:///{tmp / 'fleet.db'}",
        broker=broker_url,
        artifacts=tmp / "artifacts",
        trust=() if config_kw.get("trust_metadata") else (pub,),
        port=port,
        tokens={TOKEN: "alice"},
        tick_interval=tick,
        public_url=f"http://127.0.0.1:{port}",
        **config_kw,
    )
    server = FleetServer(config)
    server.start_background()
    app = create_app(server.service, server.tokens)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: uv.started, 15, "uvicorn to start")
        yield Harness(url, server, ApiClient(url, TOKEN), ApiClient(url))
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        server.teardown()


def add_release(h: Harness, tmp: Path, key: PrivateKey, version: str, sequence: int) -> dict[str, Any]:
    path = tmp / f"digits-{version}.efb"
    path.write_bytes(simple_bundle(key, version=version, sequence=sequence))
    return h.api.add_release(path)  # type: ignore[no-any-return]


def add_tiny_release(
    h: Harness, tmp: Path, tiny: dict[str, Path], key: PrivateKey, version: str, sequence: int
) -> None:
    """Package the tiny-digits model as ``digits@version`` and add it as a release."""
    from tests.support.agent_harness import package_tiny

    path = tmp / f"digits-{version}.efb"
    path.write_bytes(package_tiny(tiny, key, version, sequence))
    h.api.add_release(path)


def device_versions(h: Harness) -> dict[str, Any]:
    return {d["id"]: d["model_version"] for d in h.api.get("/devices")}


def rollout_finished(h: Harness, rid: int, timeout: float = 120.0) -> dict[str, Any]:
    return wait_until(  # type: ignore[no-any-return]
        lambda: (s := h.api.get(f"/rollouts/{rid}"))["state"] in ("SUCCEEDED", "ABORTED") and s,
        timeout,
        "the rollout to end",
    )
