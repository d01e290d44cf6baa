"""The late-arrival estimate (``workers.sender.arrivals``): a send that left (or, past the
answers' noise, was answered) later after its grant than its peers pushes the grants
after it by its excess past the window's slack, once for a run of late sends, judged
again when a faster one lowers the baseline."""

from __future__ import annotations

from workers.sender.arrivals import ANSWER_NOISE_US, IN_PROCESS, ArrivalGuard, chat_slack_us
from workers.sender.limits import Limits

LIMITS = Limits()  # 30/s, 1/s per chat, 20/min per group, 2 % margin
INTERVAL = 34_000  # µs: (1 + 0.02) / 30
SLACK = 20_000  # µs: 30 grants span 1.02 s of a 1 s window
CLOCK = 1_764_547_200_000_000  # Redis TIME µs; this process's clock is another one
LOCAL = 5_000_000
BACK = 2_000  # µs from a request leaving to its answer, steadily


def grant_and_answer(
    guard: ArrivalGuard, sends: list[tuple[int, int]], start: int = 0
) -> list[tuple[int | str, int]]:
    """Grant send i at ``start + i`` intervals to chat ``1000 + i``; it leaves after its
    latency and is answered ``BACK`` later. ``sends``: (chat offset, latency µs), answered
    in the order given."""
    shifts: list[tuple[int | str, int]] = []
    for i, _ in sends:
        guard.told(0, [CLOCK + start + i * INTERVAL], 0, 1000 + i)
    for i, latency in sends:
        left = LOCAL + start + i * INTERVAL + latency
        shifts += guard.answered(1000 + i, left, left + BACK, LIMITS)
    return shifts


def test_the_slacks_follow_the_limits() -> None:
    global_us, _ = LIMITS.intervals_us(0)
    assert 30 * global_us - 1_000_000 == SLACK
    assert chat_slack_us(LIMITS, 42) == 20_000
    assert chat_slack_us(LIMITS, -100) == 1_200_000  # 20 grants of 3.06 s in a minute


def test_steady_latency_pushes_nothing() -> None:
    guard = ArrivalGuard()
    assert grant_and_answer(guard, [(i, 4_000 + (i % 3) * 1_000) for i in range(60)]) == []
    assert guard.take_push() == 0 and guard.pushed_us == 0


def test_a_late_send_pushes_its_excess_past_the_slack() -> None:
    guard = ArrivalGuard()
    grant_and_answer(guard, [(i, 4_000) for i in range(10)])
    shifts = grant_and_answer(guard, [(0, 4_000 + 70_000)], start=10 * INTERVAL)
    assert guard.take_push() == 70_000 - SLACK
    assert shifts == [(1000, 70_000 - 20_000)]  # its chat's next send too (1/s: 20 ms slack)
    assert guard.take_push() == 0  # taken once


def test_a_late_send_within_the_slack_pushes_nothing() -> None:
    guard = ArrivalGuard()
    grant_and_answer(guard, [(i, 4_000) for i in range(10)])
    assert grant_and_answer(guard, [(0, 4_000 + SLACK)], start=10 * INTERVAL) == []
    assert guard.take_push() == 0


def test_a_run_of_late_sends_pushes_once() -> None:
    """Four sends granted back to back, each answered 150 ms late: the first's push, made
    after all four grants, moves every partner of the other three too."""
    guard = ArrivalGuard()
    grant_and_answer(guard, [(i, 4_000) for i in range(10)])
    start = 10 * INTERVAL
    for i in range(4):
        guard.told(0, [CLOCK + start + i * INTERVAL], 0, 2000 + i)
    for i in range(4):
        left = LOCAL + start + i * INTERVAL + 150_000
        guard.answered(2000 + i, left, left + BACK, LIMITS)
        push = guard.take_push()
        guard.told(0, [CLOCK + start + i * INTERVAL + 150_000], push, None)  # applied
    assert guard.pushed_us == 146_000 - SLACK


def test_a_send_granted_after_a_push_is_judged_on_its_own() -> None:
    """A push moves the grants after it, so a late send granted after it (its partner
    moved with it) needs a push of its own."""
    guard = ArrivalGuard()
    grant_and_answer(guard, [(i, 4_000) for i in range(10)])
    grant_and_answer(guard, [(0, 64_000)], start=10 * INTERVAL)
    guard.told(0, [CLOCK + 10 * INTERVAL + 64_000], guard.take_push(), None)
    grant_and_answer(guard, [(0, 64_000)], start=12 * INTERVAL)
    assert guard.pushed_us == 2 * (60_000 - SLACK)


def test_a_push_not_yet_applied_counts_for_the_next_late_send() -> None:
    guard = ArrivalGuard()
    grant_and_answer(guard, [(i, 4_000) for i in range(10)])
    grant_and_answer(guard, [(0, 64_000), (1, 64_000)], start=10 * INTERVAL)
    assert guard.take_push() == 40_000


def test_slow_first_answers_are_judged_again_when_a_fast_one_comes() -> None:
    """A fresh sender: its first sends answer slowly (no baseline yet); the first fast
    answer shows how late they were, and their partners are pushed then."""
    guard = ArrivalGuard()
    shifts = grant_and_answer(guard, [(0, 180_000), (1, 150_000), (2, 120_000), (3, 4_000)])
    assert guard.take_push() == 180_000 - 4_000 - SLACK
    shifted: dict[int | str, int] = {}
    for chat, us in shifts:
        shifted[chat] = shifted.get(chat, 0) + us
    assert shifted == {1000: 156_000, 1001: 126_000, 1002: 96_000}  # each by its own excess


def test_a_clock_switch_starts_afresh() -> None:
    """Grants counted in process are timed on this process's clock: no latency from a
    Redis grant is compared with one of theirs."""
    guard = ArrivalGuard()
    grant_and_answer(guard, [(i, 4_000) for i in range(5)])
    guard.told(IN_PROCESS, [LOCAL + 10 * INTERVAL], 0, 3000)
    left = LOCAL + 10 * INTERVAL + 5_000
    assert guard.answered(3000, left, left + BACK, LIMITS) == []
    assert guard.take_push() == 0


def test_a_call_that_stopped_early_keeps_the_push() -> None:
    """A 429's wait ends the script before the budgets: the push goes with the next call."""
    guard = ArrivalGuard()
    guard.give_back(30_000)
    push = guard.take_push()
    guard.told(0, [], push, None)
    assert guard.take_push() == 30_000


def test_an_answer_without_a_grant_here_is_ignored() -> None:
    guard = ArrivalGuard()
    assert guard.answered(77, LOCAL, LOCAL + BACK, LIMITS) == []


def answer_late(guard: ArrivalGuard, late: int) -> None:
    """Ten steady sends, then one that left on time and was answered ``late`` µs late."""
    grant_and_answer(guard, [(i, 4_000) for i in range(10)])
    guard.told(0, [CLOCK + 10 * INTERVAL], 0, 5000)
    left = LOCAL + 10 * INTERVAL + 4_000
    guard.answered(5000, left, left + BACK + late, LIMITS)


def test_an_answer_late_past_the_noise_pushes_what_is_past_it() -> None:
    """It left on time but its answer was 150 ms late: the network or Telegram side was
    slow (a new connection's handshakes), so it may have arrived that late."""
    guard = ArrivalGuard()
    answer_late(guard, 150_000)
    assert guard.take_push() == 150_000 - ANSWER_NOISE_US - SLACK


def test_an_answer_late_within_the_noise_pushes_nothing() -> None:
    """A busy loop resumes a lane tens of ms after its answer came: not a late arrival."""
    guard = ArrivalGuard()
    answer_late(guard, ANSWER_NOISE_US + SLACK)
    assert guard.take_push() == 0


def test_a_stall_that_held_the_grants_back_too_needs_no_push() -> None:
    """The sender's loop stalled 250 ms: the send granted before it left 200 ms late, but
    no grant was made during the stall either, so the send ``limit`` grants after it is
    already late enough (a push here would only cost rate)."""
    guard = ArrivalGuard()
    grant_and_answer(guard, [(i, 4_000) for i in range(10)])
    granted = CLOCK + 10 * INTERVAL
    guard.told(0, [granted], 0, 4000)
    guard.told(0, [granted + 250_000], 0, 4001)  # the next grant, after the stall
    left = LOCAL + 10 * INTERVAL + 204_000
    guard.answered(4000, left, left + BACK, LIMITS)
    assert guard.take_push() == 0
