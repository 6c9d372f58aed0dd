"""Extension points of the update pipeline: ``UpdateHooks``, whose default methods do nothing.

The ``Updater`` calls a hooks object at fixed points of a deployment; the agent passes the no-op
``UpdateHooks()`` unless its caller injects another. Tools and test harnesses subclass it to observe
or alter those points without the device code knowing about them. ``serve`` is called once when a
model becomes the one the engine serves (at start, on probation, after a rollback; never per request), so
a wrapper it returns costs nothing on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from device_agent import protocol as P
    from device_agent.bundle import TrustStore
    from device_agent.bundle.archive import Buffer
    from device_agent.bundle.reader import DeviceCapabilities
    from device_agent.model import LoadedModel
    from device_agent.selftest import SelfTestResult


class Halt(BaseException):
    """Raised by a hook to end the deployment worker where it stands, recording nothing more.

    ``state.json`` stays as the last completed step left it, so the next start resumes from there,
    as after a power cut. Not an ``EdgefleetError``: no handler of errors may swallow it.
    """


class UpdateHooks:
    """Called by the ``Updater`` at each step of a deployment. Every method here does nothing
    beyond the default behaviour it describes."""

    def load(
        self,
        data: Buffer,
        trust: TrustStore,
        *,
        slot: str,
        threads: int = 1,
        highest_sequence: Mapping[str, int] | None = None,
        device: DeviceCapabilities | None = None,
    ) -> LoadedModel:
        """Verify ``data`` and load its model: ``LoadedModel.load`` (a host of many devices may share runtimes).

        Raises:
            BundleError, RuntimeLoadError
        """
        from device_agent.model import LoadedModel

        return LoadedModel.load(
            data, trust, slot=slot, threads=threads, highest_sequence=highest_sequence, device=device
        )

    def after_step(self, deployment_id: str, state: P.DeploymentState) -> None:
        """A step (DOWNLOADING, VERIFYING, INSTALLING, SELFTEST) was reported and is about to run."""

    def before_install(self, model: LoadedModel) -> None:
        """The verified ``model`` is about to be written into the inactive slot. May raise ``Halt``."""

    def after_selftest(self, model: LoadedModel, result: SelfTestResult) -> SelfTestResult:
        """The self-test of ``model`` gave ``result``; returns the result the updater acts on."""
        return result

    def serve(self, model: LoadedModel) -> LoadedModel:
        """``model`` becomes the one the engine serves (at start, on probation, after a rollback; never for a
        self-test); returns the model the engine serves."""
        return model

    def replay_inputs(self, model: LoadedModel, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs the replay source (``[replay] rate``) feeds ``model`` next, as its sensor delivers them;
        a simulator shifts them here (field drift), so the engine, its drift statistics and capture see
        what the model sees."""
        return feeds


NO_HOOKS = UpdateHooks()
