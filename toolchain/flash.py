"""``edgetool flash`` provisions device homes; the implementation is ``device_agent.provision``."""

from device_agent.provision import FlashOptions, flash

__all__ = ["FlashOptions", "flash"]
