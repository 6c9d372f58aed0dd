"""edgetool: convert, quantize, evaluate, package, sign and flash models for edge devices."""

from device_agent import __version__

__all__ = ["__version__"]
