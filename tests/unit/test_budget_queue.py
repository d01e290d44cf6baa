"""How lanes wait for a bot's budget (``workers.sender.waiting``): a burst of lanes never
puts a herd of budget calls in flight, each lane still gets its grant, and a 429's pause
is answered at once."""

from __future__ import annotations

import asyncio
import time

from workers.sender.limits import PAUSED
from workers.sender.waiting import BudgetQueue


class Budget:
    """A global budget of one grant per ``interval`` seconds behind a call of ``rtt``
    seconds (Redis's round trip), counting how many calls are out at once."""

    def __init__(self, interval: float = 0.002, rtt: float = 0.001) -> None:
        self.interval, self.rtt = interval, rtt
        self.next_at = 0.0
        self.out = self.most_out = self.calls = 0
        self.paused_until = 0.0

    async def try_acquire(self, chat_id: int | str, counts: bool) -> tuple[float, float]:
        self.out += 1
        self.calls += 1
        self.most_out = max(self.most_out, self.out)
        try:
            await asyncio.sleep(self.rtt)
            now = time.monotonic()
            if now < self.paused_until:
                return self.paused_until - now, 0.0
            if not counts:  # like the limiter: only the 429 waits are checked
                return 0.0, 0.0
            if now < self.next_at:
                return self.next_at - now, 0.0
            self.next_at = now + self.interval
            return 0.0, 0.0
        finally:
            self.out -= 1

    def pause_left(self) -> float:
        left = self.paused_until - time.monotonic()
        return left if left >= 1.0 else 0.0


async def test_a_burst_of_lanes_asks_one_or_two_at_a_time_and_all_are_granted() -> None:
    budget = Budget()
    queue = BudgetQueue(budget.try_acquire, budget.pause_left)
    scopes = await asyncio.gather(*(queue.acquire(1000 + i, True) for i in range(100)))
    assert len(scopes) == 100 and set(scopes) <= {"none", "global"}
    assert budget.most_out <= 2  # not 100 calls in flight at a sender's start
    assert budget.calls < 100 * 3  # each lane asks about once per grant it waited for


async def test_calls_that_do_not_count_never_queue() -> None:
    """A call that takes no budget (an edit that only checks 429 waits) is not held up
    behind lanes queued for the global budget."""
    budget = Budget(interval=0.05)
    queue = BudgetQueue(budget.try_acquire, budget.pause_left)
    waiting = [asyncio.ensure_future(queue.acquire(1000 + i, True)) for i in range(10)]
    await asyncio.sleep(0.01)
    assert await queue.acquire(2000, False) == "none"
    assert sum(w.done() for w in waiting) < 5  # it went before most of them (50 ms each)
    await asyncio.gather(*waiting)


async def test_a_bots_429_pause_is_answered_at_once() -> None:
    budget = Budget()
    budget.paused_until = time.monotonic() + 5
    queue = BudgetQueue(budget.try_acquire, budget.pause_left)
    started = time.monotonic()
    results = await asyncio.gather(*(queue.acquire(1000 + i, True) for i in range(5)))
    assert results == [PAUSED] * 5
    assert time.monotonic() - started < 4.0  # not after the pause: the caller waits it out
