"""The shared backoff: full jitter under the cap, whatever the attempt count."""

from __future__ import annotations

import pytest

from gateway.core.backoff import backoff


@pytest.mark.parametrize("attempt", [0, 1, 5, 1_100, 10_000_000])
def test_a_delay_is_within_its_bound_for_any_attempt_count(attempt: int) -> None:
    """Loops count failures without limit (a consumer while Redis is away for an hour, a
    worker retrying an update through a long pipeline pause, every 2 s): past ~1024 an
    uncapped 2**attempt overflowed the float and the loop crashed instead of waiting."""
    bound = min(15.0, 0.5 * 2 ** min(attempt, 60))
    delays = [backoff(attempt, base=0.5, cap=15.0) for _ in range(200)]
    assert all(0 <= d <= bound for d in delays)
    assert max(delays) > bound / 4  # jittered over the whole range, not stuck at 0
