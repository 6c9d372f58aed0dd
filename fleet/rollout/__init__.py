"""Staged rollouts: the data model (``model``), the pure decision core (``engine.tick``), health comparison."""
