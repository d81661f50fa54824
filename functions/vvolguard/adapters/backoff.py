"""The one jittered back-off of retried conditional writes (DynamoDB's advice: full jitter, capped)."""
from __future__ import annotations

import random
import time

BASE_S, CAP_S = 0.005, 0.2


def backoff_seconds(attempt: int, base_s: float = BASE_S, cap_s: float = CAP_S) -> float:
    """How long to wait before retry ``attempt`` (1, 2, ...): uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap_s, base_s * (2 ** min(attempt, 30))))


def sleep_backoff(attempt: int, base_s: float = BASE_S, cap_s: float = CAP_S) -> None:
    """Wait before retry ``attempt``, so writers of one item take turns instead of colliding again."""
    time.sleep(backoff_seconds(attempt, base_s, cap_s))
