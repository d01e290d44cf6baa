"""The pure ``gcra`` and the ``GCRA`` script on real Redis agree, call after call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.runtime.scripts import GCRA
from workers.sender.limits import gcra

CLOCK = "local t = redis.call('TIME')"
# The script's only clock is Redis TIME; here the caller gives it (ARGV 7 and 8: seconds
# and microseconds, TIME's own shape), so a sequence of calls can be replayed exactly.
GIVEN_CLOCK = "local t = {ARGV[7], ARGV[8]}"
KEYS = ["flood:g", "flood:c", "tat:g", "tat:c", "recovering"]
EPOCH_US = 1_764_547_200_000_000  # 2025-12-01: TATs are real-clock sized (16 digits)

calls = st.lists(
    st.tuples(
        st.integers(-2_000_000, 5_000_000),  # the clock's step since the previous call, µs
        st.integers(1, 120_000_000),  # global interval µs (up to a 1/120 s...1/min limit)
        st.integers(1, 120_000_000),  # chat interval µs
        st.integers(0, 5_000),  # late credit µs
        st.sampled_from([0, 0, 0, 1, 20_000, 250_000]),  # a late arrival's push µs
    ),
    min_size=1,
    max_size=40,
)


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    try:
        yield r
    finally:
        r.close()


def test_the_clock_is_replaced() -> None:
    """The test's script differs from the real one only in where ``now`` comes from."""
    assert GCRA.source.count(CLOCK) == 1


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=calls)
def test_script_matches_pure_gcra(
    client: redis.Redis, steps: list[tuple[int, int, int, int, int]]
) -> None:
    """Same allowed, same waits, same stored TATs as two pure ``gcra`` limits together
    (a push moves the global TAT whether the call is granted or not); the third value
    answered is the script's clock."""
    script = client.register_script(GCRA.source.replace(CLOCK, GIVEN_CLOCK))
    client.delete(*KEYS)
    now, tat_g, tat_c = EPOCH_US, 0, 0
    for step, interval_g, interval_c, credit, push in steps:
        now += step
        ok_g, next_g, wait_g = gcra(now, tat_g, interval_g, credit, push)
        ok_c, next_c, wait_c = gcra(now, tat_c, interval_c, credit)
        if ok_g and ok_c:  # the script takes both budgets or neither
            tat_g, tat_c = next_g, next_c
            expected = [0, 0, now]
        else:
            if push:  # kept though not granted
                tat_g = next_g if not ok_g else next_g - interval_g
            expected = [wait_g, wait_c, now]
        clock = [now // 1_000_000, now % 1_000_000]
        got = script(keys=KEYS, args=[interval_g, interval_c, credit, 0, 5000, push, *clock])
        stored = [int(v) if v is not None else 0 for v in client.mget(KEYS[2], KEYS[3])]
        assert (got, stored) == (expected, [tat_g, tat_c]), (now, interval_g, interval_c, push)
