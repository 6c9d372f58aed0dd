"""``edge-agent run`` whose update steps each last ``STEP_DELAY_S`` longer, so a kill can land inside them.

    python -m tests.support.slow_agent --home DIR [--log-level info] [--step-delay SECONDS]

The power-cut harness runs this instead of ``edge-agent run``: the same agent, with update hooks that
sleep after each step is reported (DOWNLOADING, VERIFYING, INSTALLING, SELFTEST).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from device_agent import protocol as P
from device_agent.cli import run_agent
from device_agent.core import AgentParts
from device_agent.hooks import UpdateHooks

STEP_DELAY_S = 0.3  # the agent pauses this long in each update step


class SlowSteps(UpdateHooks):
    """Sleeps ``delay_s`` after each reported step."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def after_step(self, deployment_id: str, state: P.DeploymentState) -> None:
        time.sleep(self.delay_s)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.slow_agent")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--step-delay", type=float, default=STEP_DELAY_S, help="seconds per update step")
    args = parser.parse_args()
    run_agent(args.home, args.log_level, AgentParts(hooks=SlowSteps(args.step_delay)))


if __name__ == "__main__":
    main()
