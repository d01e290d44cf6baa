"""Late arrivals: Telegram counts a send when it arrives, the limiter spaces its grants.

GCRA spaces grants one interval ``I = (1 + margin) / limit`` apart, so a window of one
second holds ``limit`` grants with ``slack = limit · I - 1 s`` to spare (20 ms at 30/s
and the default 2 % margin). Sends reach Telegram some time after their grant: the same
time for each in a steady state, but not at a sender's start (new connections, a loop
busy with its first reads, a slow first fence) or when a connection is added under
load. A send that arrives ``e`` later than its peers moves its window's edge by ``e``:
past the slack, the send ``limit`` grants after it lands in the same second, and
Telegram answers 429, which pauses the bot for a whole second (measured: the first 4
sends of a fresh sender answered 50-60 ms slower than the rest, and each run met one or
two 429s at 0.93 s).

The sender cannot see arrivals, but it sees each send's answer. ``e`` is estimated as
the send's latency (its grant, on the limiter's clock, → its answer, on this process's)
over the lowest latency of the last ``BASELINE_US`` (the fastest a partner send may be;
the two clocks' offset cancels out). Past the slack, every grant after now is pushed by
the excess (a global *push* the limiter's next call carries, the chat's own schedule
shifted in process: its lane is this sender's). Pushes since a send's grant count
toward it, so a run of late sends pushes once. When the baseline drops (a first fast
answer after slow ones), the recent sends are judged again: the first answers of a
fresh sender have no baseline yet. Grants are timed on the clock that made them (Redis
TIME of the own or the standby set, or this process's while counting in process); a
switch starts the estimate afresh. Costs nothing while latency is steady; a late send
costs its excess once instead of a 429's second-long pause.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # limits.py keeps an ArrivalGuard in its LocalBudget
    from workers.sender.limits import Limits

WINDOW_US = 1_100_000  # a send can matter to a send granted up to ~1 s later (+ slack)
BASELINE_US = 2_000_000  # the lowest latency of the last 2 s: the fastest a partner may be
GRANTS_MAX = 4096  # grant times kept for answers still to come
IN_PROCESS = -1  # the clock of grants counted in process (Redis sets are 0, 1, …)


@dataclass(slots=True)
class _Sent:
    granted: int  # µs on the limiter's clock
    latency: int  # µs: grant → answer (the two clocks' offset included)
    chat_id: int | str
    chat_shifted: int = 0  # µs its chat's schedule was already shifted for it


class ArrivalGuard:
    """One bot's late-arrival estimate in one sender (pure; times in µs, given)."""

    def __init__(self) -> None:
        self._clock_of: int | None = None  # the budget set whose clock times the grants
        self._forget()
        self.pending = 0  # µs the global schedule still has to be pushed
        self.pushed_us = 0  # µs pushed in all (the stop log, tests)

    def _forget(self) -> None:
        self._grants: dict[int | str, int] = {}
        self._recent: deque[_Sent] = deque()
        self._lows: deque[tuple[int, int]] = deque()  # (local µs, latency), rising
        self._pushes: deque[tuple[int, int]] = deque()  # (clock µs applied, µs)
        self._baseline: int | None = None
        self._clock = 0  # the limiter clock's latest reading

    def take_push(self) -> int:
        """The push for the next counted call (µs), cleared: ``told`` says it was applied."""
        push, self.pending = self.pending, 0
        return push

    def give_back(self, push: int) -> None:
        self.pending += push

    def told(self, clock_of: int, at: list[int], push: int, granted: int | str | None) -> None:
        """A counted call's answer: ``at`` holds the time (on the clock of set
        ``clock_of``) it reached the budgets, carrying ``push``, and granted a send to
        ``granted`` (None: it was told to wait); empty ``at``: it stopped before (a
        429's wait), so the push is still to make."""
        if not at:
            self.give_back(push)
            return
        if clock_of != self._clock_of:
            self._clock_of = clock_of
            self._forget()
        now = int(at[0])
        self._clock = max(self._clock, now)
        if push:
            self._pushes.append((now, push))
        if granted is not None:
            self._grants[granted] = now
            if len(self._grants) > GRANTS_MAX:
                edge = now - WINDOW_US
                self._grants = {c: t for c, t in self._grants.items() if t > edge}

    def answered(self, chat_id: int | str, now: int, limits: Limits) -> list[tuple[int | str, int]]:
        """A send granted here succeeded at ``now`` (this process's clock): (chat, µs)
        shifts for the chats' own schedules; a global push is added to ``pending``."""
        granted = self._grants.pop(chat_id, None)
        if granted is None:
            return []
        sent = _Sent(granted, now - granted, chat_id)
        edge = self._clock - WINDOW_US
        recent, pushes, lows = self._recent, self._pushes, self._lows
        recent.append(sent)
        while recent and recent[0].granted < edge:
            recent.popleft()
        while pushes and pushes[0][0] < edge:
            pushes.popleft()
        while lows and lows[-1][1] >= sent.latency:
            lows.pop()
        lows.append((now, sent.latency))
        while lows[0][0] < now - BASELINE_US:
            lows.popleft()
        baseline, before = lows[0][1], self._baseline
        self._baseline = baseline
        judged = list(recent) if before is not None and baseline < before else [sent]
        global_us, _ = limits.intervals_us(0)
        slack_g = int(limits.global_per_second) * global_us - 1_000_000
        shifts: list[tuple[int | str, int]] = []
        for s in judged:
            excess = s.latency - baseline
            since = self.pending + sum(us for at, us in pushes if at > s.granted)
            need = excess - slack_g - since
            if need > 0:
                self.pending += need
                self.pushed_us += need
            need_c = excess - chat_slack_us(limits, s.chat_id) - s.chat_shifted
            if need_c > 0:
                s.chat_shifted += need_c
                shifts.append((s.chat_id, need_c))
        return shifts


def chat_slack_us(limits: Limits, chat_id: int | str) -> int:
    """A chat's window less its grants' span: 20 ms for a private chat at 1/s (2 %)."""
    _, chat_us = limits.intervals_us(chat_id)
    if isinstance(chat_id, str) or chat_id < 0:  # a group: 20 per minute
        return int(limits.group_per_minute) * chat_us - 60_000_000
    return int(limits.chat_per_second) * chat_us - 1_000_000
