"""Every error the toolchain raises on purpose, under one root: ``ToolchainError``.

Grouped by cause (after python-tuf): ``InputError`` for what the engineer supplied (a model, a
data file, an option, a profile) and can fix, ``MeasureError`` for a measuring child process that
failed on this host. ``InputError`` is also a ``device_agent.errors.ConfigError``, as these errors
were before the toolchain had its own root. Each ``code`` is the stable reason the CLI prints in
brackets (``[data]``, ``[unsupported-ops]``); bundle and runtime errors keep device_agent's classes.
"""

from __future__ import annotations

from device_agent.errors import ConfigError, EdgefleetError


class ToolchainError(EdgefleetError):
    """Root of every error the toolchain raises on purpose."""

    code = "toolchain"


class InputError(ToolchainError, ConfigError):
    """A file or option the engineer supplied is missing, unreadable or unusable."""

    code = "config"


class ModelError(InputError):
    """A model file is missing, of an unknown kind, corrupt, or cannot be converted."""

    code = "model"


class UnsupportedOpsError(ModelError):
    """The model uses operations the target format's built-in kernels do not provide.

    ``ops`` holds the operation names, sorted, so callers need not parse the message.
    """

    code = "unsupported-ops"

    def __init__(self, message: str, ops: tuple[str, ...]) -> None:
        super().__init__(message)
        self.ops = ops


class DataError(InputError):
    """A user-supplied data file is missing, unreadable, or does not fit the model's inputs."""

    code = "data"


class QuantizeError(InputError):
    """The model cannot be quantized as asked (wrong source, missing calibration, bad options)."""

    code = "quantize"


class ProfileError(InputError):
    """A device profile is unknown or malformed."""

    code = "profile"


class MeasureError(ToolchainError):
    """The child process measuring a model's latency and memory failed.

    ``returncode`` is the child's exit status; its last error line is in the message.
    """

    code = "measure"

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


__all__ = [
    "DataError",
    "InputError",
    "MeasureError",
    "ModelError",
    "ProfileError",
    "QuantizeError",
    "ToolchainError",
    "UnsupportedOpsError",
]
