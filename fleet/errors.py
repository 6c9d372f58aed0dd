"""Every error the fleet manager raises on purpose, under one base: ``FleetError``.

``FleetError`` subclasses ``device_agent.errors.EdgefleetError``, so the shared CLI plumbing
(``device_agent.cliutil.Group``) prints any of them as one line. Errors caused by bad configuration
or by transport trouble also subclass the matching cause root of ``device_agent.errors``
(``ConfigError``, ``TransportError``), so code that catches by cause keeps working; each keeps the
stable ``code`` the API and the CLI print.

    FleetError
    ├── NotFoundError          a device, release or rollout that does not exist     (HTTP 404)
    ├── ConflictError          the request contradicts the current state            (HTTP 409)
    ├── AuthError              no valid bearer token                                (HTTP 401)
    │   └── ForbiddenError     a valid token whose role may not do this, a bad signed URL (HTTP 403)
    ├── TooLargeError          a request body over its limit                        (HTTP 413)
    ├── FleetConfigError       + ConfigError: a bad setting of serve or broker-config
    │   └── InvalidRequestError  a request or option that fails validation          (HTTP 400)
    ├── BrokerError            + TransportError: a local broker did not start
    └── ApiError               + TransportError: the HTTP API answered an error or was unreachable
"""

from __future__ import annotations

from device_agent.errors import ConfigError, EdgefleetError, TransportError


class FleetError(EdgefleetError):
    """Base of every error the fleet manager raises on purpose."""

    code = "fleet"


class NotFoundError(FleetError):
    """A device, release or rollout that does not exist."""

    code = "not-found"


class ConflictError(FleetError):
    """The request contradicts the current state (a release added twice, approving a running rollout)."""

    code = "conflict"


class AuthError(FleetError):
    """An API call without a valid bearer token (missing, unknown, expired or revoked)."""

    code = "unauthorized"


class ForbiddenError(AuthError):
    """A valid token whose role does not allow the call, or an artifact URL with a bad or expired signature."""

    code = "forbidden"


class TooLargeError(FleetError):
    """A request body larger than the route accepts (refused before it is read)."""

    code = "too-large"


class FleetConfigError(FleetError, ConfigError):
    """A setting of ``serve`` or ``broker-config`` that cannot work (a bad user id, --ingest-only without MQTT 5)."""

    code = "config"


class InvalidRequestError(FleetConfigError):
    """A request or option that fails validation (bad stages, bad selector, bad NAME@VERSION)."""

    code = "invalid"


class BrokerError(FleetError, TransportError):
    """A local broker (mosquitto or the embedded one) is missing or did not start listening."""

    code = "transport"


class ApiError(FleetError, TransportError):
    """The fleet manager's HTTP API answered with an error or could not be reached.

    ``status_code`` is the HTTP status (None when the server was not reached); ``code`` the server's
    error code when it sent one.
    """

    code = "api"

    def __init__(self, message: str, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        if code:
            self.code = code
