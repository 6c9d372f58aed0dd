"""Field data capture on the device: a policy (off until the fleet enables one), rules evaluated off the
inference hot path, a bounded on-disk store, and batched uploads the fleet manager must confirm.

``policy`` is light (no numpy) so the wire protocol can parse ``cmd/capture`` with it; the rest is imported
by the agent only (``device_agent.capture.control``).
"""
