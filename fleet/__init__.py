"""fleetctl: device registry, releases, staged rollouts, telemetry ingest, HTTP API and metrics."""

from device_agent import __version__

__all__ = ["__version__"]
