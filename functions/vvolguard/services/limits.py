"""The guessing limits the dashboard applies (docs/dashboard.md): the sign-in back-off and the simulator's
password guesses. Their counters live in DynamoDB (``adapters/limits.py``); the dashboard, a transport,
reaches them through this services module, never the adapter itself (tests/test_layers.py)."""
from __future__ import annotations

from vvolguard.adapters.limits import GuessSlots, LoginLimiter, Refused

__all__ = ["GuessSlots", "LoginLimiter", "Refused"]
