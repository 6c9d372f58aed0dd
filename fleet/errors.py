"""Errors the fleet manager raises on purpose; each subclasses a root of ``device_agent.errors``."""

from __future__ import annotations

from device_agent.errors import ConfigError, EdgefleetError, TransportError


class FleetError(EdgefleetError):
    """Root of fleet-manager errors that are not bad data, bad config or transport trouble."""

    code = "fleet"


class NotFoundError(FleetError):
    """A device, release or rollout that does not exist."""

    code = "not-found"


class ConflictError(FleetError):
    """The request contradicts the current state (a release added twice, approving a running rollout)."""

    code = "conflict"


class AuthError(FleetError):
    """A mutating API call without a valid bearer token."""

    code = "unauthorized"


class InvalidRequestError(ConfigError):
    """A request or option that fails validation (bad stages, bad selector, bad NAME@VERSION)."""

    code = "invalid"


class ApiError(TransportError):
    """The fleet manager's HTTP API answered with an error or could not be reached."""

    code = "api"

    def __init__(self, message: str, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        if code:
            self.code = code
