"""The inference runtime boundary: one small interface, one module per backend, chosen by bundle runtime."""

from device_agent.errors import RuntimeLoadError
from device_agent.runtime.base import Runtime, available_runtimes, load_runtime

__all__ = ["Runtime", "RuntimeLoadError", "available_runtimes", "load_runtime"]
