"""The fleet simulator behind ``fleetctl simulate``: devices running the real device-agent code.

Layers, each importing only those before it: ``config`` (what to simulate) and ``faults`` (the
injected faults, as ``device_agent.hooks.UpdateHooks`` and an MQTT client with outages) <- the device
drivers ``agents`` (a full threaded ``Agent`` per device) and ``lean`` (``AgentCore``s multiplexed on one
MQTT thread and a shared pool) <- ``procs`` (lean devices over worker processes) <- ``runner`` <- ``command``
(the click command, which imports the rest only when it runs). The device code knows nothing of this package.
"""
