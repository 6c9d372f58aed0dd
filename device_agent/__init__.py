"""edge-agent: verifies and runs signed model bundles on a device, reports telemetry, applies updates.

Importing this package is cheap: runtimes, numpy and paho are imported only by the modules that
need them (see tests/test_imports.py).
"""

__version__ = "0.1.0"
