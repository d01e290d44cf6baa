"""The degraded limiter's share arithmetic: N senders counting apart stay under the limit."""

from __future__ import annotations

import random

import pytest

from gateway.testkit.emulator.limits import max_in_window
from workers.sender.limits import LATE_CREDIT_US, gcra, share_interval_us


def schedule(interval_us: int, start_us: int, until_us: int) -> list[float]:
    """Grant times (seconds) of one sender asking as often as its schedule allows."""
    tat, now, out = start_us, start_us, []
    while now < until_us:
        ok, new_tat, wait = gcra(now, tat, interval_us, LATE_CREDIT_US)
        if ok:
            tat = new_tat
            out.append(now / 1_000_000)
        else:
            now += wait
    return out


@pytest.mark.parametrize("senders", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize(("limit", "margin"), [(30.0, 0.02), (20.0, 0.15), (1000.0, 0.02)])
def test_n_shares_never_put_more_than_the_limit_into_a_window(
    senders: int, limit: float, margin: float
) -> None:
    """Whatever the phases of the N schedules, a trailing 1 s window (the emulator's, as
    Telegram counts) holds at most the limit: each share is floor(limit / N) per second."""
    rng = random.Random(senders * 1000 + int(limit))
    interval = share_interval_us(limit, senders, margin)
    for _ in range(5):
        stamps: list[float] = []
        for _ in range(senders):
            stamps += schedule(interval, rng.randrange(0, 1_000_000), 4_000_000)
        assert max_in_window(stamps, 1.0) <= limit


def test_a_share_is_not_far_below_its_part_of_the_limit() -> None:
    """Two senders at 30/s: 15/s each less the margin, not a fraction of it."""
    interval = share_interval_us(30.0, 2, 0.02)
    assert 1_000_000 / interval == pytest.approx(15 / 1.02, rel=0.01)


def test_one_sender_gets_the_whole_limit() -> None:
    assert share_interval_us(30.0, 1, 0.02) == int(1_000_000 * 1.02 / 30)
