"""Retry delays: exponential backoff with full jitter, shared by every retry loop."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter (pure)."""
    return random.uniform(0, min(cap, base * 2**attempt))
