"""Disk-fault harness: like ``tests/support/powercut.py`` but for the disk. A real agent runs on a
small tmpfs home whose free space an update hook takes away at a chosen step of a deployment.

``FillAtStep`` fills the filesystem down to ``leave`` bytes when the updater reports ``step``
(DOWNLOADING, VERIFYING, INSTALLING, SELFTEST), so every write that follows (the download, state.json,
the rollback floor, the spool) meets ENOSPC or a nearly full disk. ``free()`` gives the space back.
"""

from __future__ import annotations

import threading
from pathlib import Path

from device_agent import protocol as P
from device_agent.agent import Agent
from device_agent.config import load_config
from device_agent.core import AgentParts
from device_agent.home import Home
from device_agent.hooks import UpdateHooks
from tests.support.diskfs import fill

STEPS = ("DOWNLOADING", "VERIFYING", "INSTALLING", "SELFTEST")


class FillAtStep(UpdateHooks):
    """Fills ``fs`` down to ``leave`` free bytes once, when a deployment reports ``step``."""

    def __init__(self, fs: Path, step: str, leave: int) -> None:
        self.fs, self.step, self.leave = fs, step, leave
        self.filler: Path | None = None
        self.armed = True

    def after_step(self, deployment_id: str, state: P.DeploymentState) -> None:
        if self.armed and state.value == self.step:
            self.armed = False
            self.filler = fill(self.fs, self.leave)

    def free(self) -> None:
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)
            self.filler = None


class RunningAgent:
    """A real ``Agent`` with ``hooks``, its supervisor loop in a thread of the test process."""

    def __init__(self, home: Home, hooks: UpdateHooks) -> None:
        self.agent = Agent(home, load_config(home.config), parts=AgentParts(hooks=hooks))
        self.agent.start()
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.agent.stop_event.is_set()

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(timeout=30)
