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

The sender cannot see arrivals, but it sees when each request left and when its answer
came. ``e`` is the larger of two estimates, each over its lowest of the last
``BASELINE_US`` (the fastest a partner send may be; the offset between the limiter's
clock and this process's cancels out): grant → request leaving (lateness on this side:
a first fence behind a herd of budget calls, a busy loop; exact), and grant → answer
less ``ANSWER_NOISE_US`` (a late network or Telegram side, or a new connection's
handshakes; the answer's own way back and this loop's lag after it add to it, so only
what is past that noise counts: measured, a CPU-bound sender's answers wander by tens
of ms, and counting them in full cost a quarter of its rate). The send ``limit`` grants
after a late one comes no sooner than ``limit - p`` intervals after the last of the
``p`` grants made here since it (and any push since): where that is still within one
second of the late send's arrival, every grant after now is pushed by the difference (a
global *push* the limiter's next call carries; the chat's own schedule is shifted in
process by the excess past its slack: its lane is this sender's). In a full schedule
that is the excess past the slack; a schedule that idled (a stall) needs less. A run of
late sends pushes once. When a baseline
drops (a first fast send after slow ones), the recent sends are judged again: the first
sends of a fresh sender have no baseline yet. Grants are timed on the clock that made
them (Redis TIME of the own or the standby set, or this process's while counting in
process); a switch starts the estimate afresh. Costs nothing while latency is steady; a
late send costs its excess once instead of a 429's second-long pause.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass
from typing import Protocol


class Limits(Protocol):
    """``workers.sender.limits.Limits`` as used here (that module keeps an ArrivalGuard in
    its LocalBudget, so this one does not import it)."""

    @property
    def global_per_second(self) -> float: ...
    @property
    def chat_per_second(self) -> float: ...
    @property
    def group_per_minute(self) -> float: ...
    def intervals_us(self, chat_id: int | str) -> tuple[int, int]: ...


WINDOW_US = 1_100_000  # a send can matter to a send granted up to ~1 s later (+ slack)
BASELINE_US = 2_000_000  # the lowest latency of the last 2 s: the fastest a partner may be
ANSWER_NOISE_US = 50_000  # an answer's lateness below this is the way back and loop lag
GRANTS_MAX = 4096  # grant times kept for answers still to come
IN_PROCESS = -1  # the clock of grants counted in process (Redis sets are 0, 1, …)


@dataclass(slots=True)
class _Sent:
    granted: int  # µs on the limiter's clock
    left: int  # µs: grant → the request left (the two clocks' offset included)
    answer: int  # µs: grant → its answer (the same offset)
    chat_id: int | str
    chat_shifted: int = 0  # µs its chat's schedule was already shifted for it


class _Lowest:
    """The lowest value of the last ``BASELINE_US`` (a monotonic deque)."""

    def __init__(self) -> None:
        self._values: deque[tuple[int, int]] = deque()  # (local µs, value), rising

    def add(self, now: int, value: int) -> int:
        values = self._values
        while values and values[-1][1] >= value:
            values.pop()
        values.append((now, value))
        while values[0][0] < now - BASELINE_US:
            values.popleft()
        return values[0][1]


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
        self._left, self._answer = _Lowest(), _Lowest()
        self._pushes: deque[tuple[int, int]] = deque()  # (clock µs applied, µs)
        self._baseline: tuple[int, int] | None = None  # (left, answer)
        self._clock = 0  # the limiter clock's latest reading
        self._granted_at: list[int] = []  # this bot's grants here (limiter clock), rising

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
            times = self._granted_at
            times.append(now)
            if len(times) > 2 * GRANTS_MAX or (len(times) > 64 and times[0] < now - WINDOW_US):
                del times[: bisect.bisect_left(times, now - WINDOW_US)]
            if len(self._grants) > GRANTS_MAX:
                edge = now - WINDOW_US
                self._grants = {c: t for c, t in self._grants.items() if t > edge}

    def answered(
        self, chat_id: int | str, left: int, now: int, limits: Limits
    ) -> list[tuple[int | str, int]]:
        """A send granted here left at ``left`` and succeeded at ``now`` (this process's
        clock): (chat, µs) shifts for the chats' own schedules; a global push is added to
        ``pending``."""
        granted = self._grants.pop(chat_id, None)
        if granted is None:
            return []
        sent = _Sent(granted, left - granted, now - granted, chat_id)
        edge = self._clock - WINDOW_US
        recent, pushes = self._recent, self._pushes
        recent.append(sent)
        while recent and recent[0].granted < edge:
            recent.popleft()
        while pushes and pushes[0][0] < edge:
            pushes.popleft()
        baseline = (self._left.add(now, sent.left), self._answer.add(now, sent.answer))
        before, self._baseline = self._baseline, baseline
        dropped = before is not None and (baseline[0] < before[0] or baseline[1] < before[1])
        judged = list(recent) if dropped else [sent]
        global_us, _ = limits.intervals_us(0)
        n = int(limits.global_per_second)
        times = self._granted_at
        shifts: list[tuple[int | str, int]] = []
        for s in judged:
            excess = max(s.left - baseline[0], s.answer - baseline[1] - ANSWER_NOISE_US)
            # The send `n` grants after it comes no sooner than `n - p` intervals after the
            # last grant since (`p` of them): a schedule that idled (a stall, fewer sends)
            # has moved it later already. Pushes after that grant, or still to make, too.
            after = bisect.bisect_right(times, s.granted)
            last = times[-1] if after < len(times) else s.granted
            since = self.pending + sum(us for at, us in pushes if at > last)
            partner = last + (n - (len(times) - after)) * global_us + since
            need = s.granted + excess + 1_000_000 - partner
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
