"""The device home directory (DESIGN.md) and its state file, written atomically.

```
agent.toml  trust/*.pub  slots/a/bundle.efb  slots/b/bundle.efb  state.json  floor.log  downloads/  spool/  run/
```

A slot is one file, the verified bundle itself: installing is one atomic replace, and the agent
re-verifies a slot's signatures and hashes every time it loads it. ``state.json`` says which slot
is active, which is on probation, and the highest committed sequence per bundle name. Whatever
instant the power is cut, the next start finds the old state or the new one, never a mix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device_agent.errors import StateError
from device_agent.fsutil import atomic_write

SLOTS = ("a", "b")
MAX_REMEMBERED_DEPLOYMENTS = 64
MAX_REMEMBERED_REQUESTS = 256


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


@dataclass
class Probation:
    """The active slot runs a new model that is not committed yet."""

    slot: str
    deployment_id: str
    name: str
    version: str
    sequence: int
    started_ms: int
    boots: int = 0  # agent starts since probation began
    baseline_p95_ms: float | None = None  # the previous model's p95, for the latency-ratio gate


@dataclass
class Pending:
    """A deployment between receipt and activation; its steps are idempotent, so a restart redoes them."""

    deployment_id: str
    request_id: str
    url: str
    sha256: str
    size: int
    slot: str
    boots: int = 0  # agent starts while this deployment was pending (crash-loop guard)
    cancelled: bool = False  # a rollback arrived before activation: stop at the next step


@dataclass
class DeviceState:
    active: str = "a"
    previous: str | None = None  # slot holding the model to roll back to
    committed: dict[str, int] = field(default_factory=dict)  # name -> highest committed sequence
    probation: Probation | None = None
    pending: Pending | None = None
    deployments: dict[str, str] = field(default_factory=dict)  # deployment_id -> last state, insertion-ordered
    requests: list[str] = field(default_factory=list)  # recent request ids, oldest first

    def remember_deployment(self, deployment_id: str, state: str) -> None:
        self.deployments.pop(deployment_id, None)
        self.deployments[deployment_id] = state
        while len(self.deployments) > MAX_REMEMBERED_DEPLOYMENTS:
            self.deployments.pop(next(iter(self.deployments)))

    def remember_request(self, request_id: str) -> None:
        self.requests.append(request_id)
        del self.requests[:-MAX_REMEMBERED_REQUESTS]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DeviceState:
        """Raises: StateError if the document is not a valid state."""
        try:
            doc = json.loads(data)
            probation = Probation(**doc["probation"]) if doc.get("probation") else None
            pending = Pending(**doc["pending"]) if doc.get("pending") else None
            state = cls(
                active=doc["active"],
                previous=doc.get("previous"),
                committed={str(k): int(v) for k, v in doc.get("committed", {}).items()},
                probation=probation,
                pending=pending,
                deployments={str(k): str(v) for k, v in doc.get("deployments", {}).items()},
                requests=[str(r) for r in doc.get("requests", [])],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"state.json is not a valid device state: {exc}") from None
        if state.active not in SLOTS or state.previous not in (*SLOTS, None):
            raise StateError("state.json names an unknown slot")
        return state


@dataclass(frozen=True)
class Home:
    """Paths of one device home."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def trust(self) -> Path:
        return self.root / "trust"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def floor_file(self) -> Path:
        """The rollback floor's append-only second copy (``device_agent.floor``)."""
        return self.root / "floor.log"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def run_file(self) -> Path:
        """Written by a running agent: pid and local API address."""
        return self.root / "run" / "agent.json"

    @property
    def api_socket(self) -> Path:
        """The local API's Unix socket (``[api] listen = "unix"``, the default)."""
        return self.root / "run" / "api.sock"

    @property
    def api_token(self) -> Path:
        """The local API's token when it listens on TCP (mode 0600)."""
        return self.root / "api.token"

    def slot(self, name: str) -> Path:
        return self.root / "slots" / name / "bundle.efb"

    def slots(self) -> Iterator[tuple[str, Path]]:
        for name in SLOTS:
            yield name, self.slot(name)

    def create_dirs(self) -> None:
        for d in (self.trust, self.downloads, self.spool, self.run_file.parent, *(self.slot(s).parent for s in SLOTS)):
            d.mkdir(parents=True, exist_ok=True)

    def load_state(self) -> DeviceState:
        try:
            data = self.state_file.read_bytes()
        except FileNotFoundError:
            raise StateError(f"{self.state_file} not found: is this a device home made by `edgetool flash`?") from None
        except OSError as exc:
            raise StateError(f"cannot read {self.state_file}: {exc.strerror}") from None
        return DeviceState.from_json(data)

    def save_state(self, state: DeviceState) -> None:
        atomic_write(self.state_file, state.to_json())

    def read_run_info(self) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads(self.run_file.read_text())
            return info
        except (OSError, ValueError):
            return None
