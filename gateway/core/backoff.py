"""Retry delays: exponential backoff with full jitter, shared by every retry loop."""

from __future__ import annotations

import random

MAX_EXPONENT = 60  # 2**60 outgrows any cap; a larger one would overflow the float below


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter (pure). Any ``attempt`` count is fine: a loop
    that has failed for hours (Redis away, a long pipeline pause) keeps waiting ``cap``."""
    return random.uniform(0, min(cap, base * 2 ** min(max(attempt, 0), MAX_EXPONENT)))
