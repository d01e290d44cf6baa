"""GCRA arithmetic (pure mirror of the Lua script) and limit intervals."""

from __future__ import annotations

from workers.sender.limits import Limits, gcra


def simulate(interval_us: int, attempts_at_us: list[int]) -> list[int]:
    """Times at which sends are allowed when each attempt retries after the given wait."""
    tat = 0
    sent = []
    for t in attempts_at_us:
        now = t
        while True:
            ok, new_tat, wait = gcra(now, tat, interval_us)
            if ok:
                tat = new_tat
                sent.append(now)
                break
            now += wait
    return sent


def test_no_burst_spacing() -> None:
    sent = simulate(100_000, [0] * 20)
    assert sent == [i * 100_000 for i in range(20)]


def test_idle_period_does_not_bank_credit() -> None:
    """After a pause, the first second still holds at most the limit (no burst)."""
    interval, _ = Limits(global_per_second=30, margin=0.05).intervals_us(1)
    sent = simulate(interval, [0] * 5 + [10_000_000] * 60)
    after = [t for t in sent if t >= 10_000_000]
    in_first_second = [t for t in after if t < 11_000_000]
    assert len(in_first_second) <= 30


def test_without_margin_a_closed_window_can_hold_one_extra() -> None:
    """Why the margin exists: exact spacing puts limit+1 sends in a closed 1 s window."""
    sent = simulate(1_000_000 // 30, [0] * 40)
    assert len([t for t in sent if t <= 1_000_000]) == 31


def test_sliding_window_never_exceeds_limit_with_margin() -> None:
    limits = Limits(global_per_second=30, margin=0.05)
    global_us, _ = limits.intervals_us(1)
    sent = simulate(global_us, [0] * 300)
    for i, t in enumerate(sent):
        window = [s for s in sent[i:] if s <= t + 1_000_000]  # closed 1 s window
        assert len(window) <= 30


def test_groups_use_per_minute_limit() -> None:
    limits = Limits(group_per_minute=20, chat_per_second=1, margin=0.0)
    assert limits.intervals_us(-100123)[1] == 3_000_000
    assert limits.intervals_us(555)[1] == 1_000_000
    assert limits.intervals_us("@channel")[1] == 3_000_000


def test_late_sends_keep_the_schedule_without_bursts() -> None:
    """Every real send lands a little late; with credit the rate stays on schedule, and
    still no closed 1 s window holds more than the limit."""
    interval, _ = Limits(global_per_second=30, margin=0.02).intervals_us(1)
    credit = 2_000

    def run(credit_us: int) -> list[int]:
        tat, now, sent = 0, 0, []
        for _ in range(300):
            while True:
                ok, new_tat, wait = gcra(now, tat, interval, credit_us)
                if ok:
                    tat = new_tat
                    sent.append(now)
                    now += 600  # the send itself lands 0.6 ms after it was allowed
                    break
                now += wait + 600
        return sent

    with_credit, without = run(credit), run(0)
    rate = lambda s: (len(s) - 1) / ((s[-1] - s[0]) / 1_000_000)  # noqa: E731
    assert rate(with_credit) >= 30 * 0.975
    assert rate(without) < rate(with_credit)
    for i, t in enumerate(with_credit):
        assert len([s for s in with_credit[i:] if s <= t + 1_000_000]) <= 30
