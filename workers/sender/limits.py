"""The limiter's arithmetic (pure): GCRA for one limit, the limits, a sender's share.

``gcra`` mirrors the Lua script (``gateway.runtime.scripts.GCRA``) and is held to it on
real Redis (tests/integration/test_gcra_lua.py); ``workers.sender.ratelimit`` runs it in
Redis or, while the limiter's keys do not answer, in process.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from workers.sender.arrivals import IN_PROCESS, ArrivalGuard

LATE_CREDIT_US = 2_000  # lateness a send may make up (bench: sends land ~0.6 ms late)


def gcra(
    now_us: int, tat_us: int, interval_us: int, credit_us: int = 0, push_us: int = 0
) -> tuple[bool, int, int]:
    """(allowed, new TAT, wait µs) for one limit (pure mirror of the script).

    A send that comes up to ``credit_us`` late keeps the schedule (the next is due one
    interval after the *scheduled* time, not after now), so the small lateness of every
    real send does not add up; ``credit_us`` ≪ interval, so no burst ever forms.
    ``push_us`` moves the schedule later first, granted or not (``workers.sender.arrivals``).
    """
    tat = max(tat_us, now_us - credit_us) + push_us
    if tat > now_us:
        return False, tat if push_us else tat_us, tat - now_us
    return True, tat + interval_us, 0


def share_interval_us(global_per_second: float, senders: int, margin: float) -> int:
    """Emission interval of one sender's share of the global limit among ``senders``
    (pure). A share is ``floor(global / senders)`` sends per second, so ``senders``
    independent schedules never put more than the limit into any window, whatever their
    phases (a schedule of interval ``(1 + margin) / b`` puts at most ``b`` sends into a
    window of one second). With more senders than sends per second, each gets
    ``senders / global`` seconds between sends."""
    n = max(1, senders)
    per_second = math.floor(global_per_second / n)
    if per_second >= 1:
        return int(1_000_000 * (1.0 + margin) / per_second)
    return int(1_000_000 * (1.0 + margin) * n / global_per_second)


@dataclass(frozen=True, slots=True)
class Limits:
    global_per_second: float = 30.0
    chat_per_second: float = 1.0
    group_per_minute: float = 20.0
    margin: float = 0.02  # fraction of headroom under each limit

    def intervals_us(self, chat_id: int | str) -> tuple[int, int]:
        """(global, chat) emission intervals in µs; groups use the per-minute limit."""
        scale = 1.0 + self.margin
        global_us = int(1_000_000 * scale / self.global_per_second)
        is_group = (isinstance(chat_id, int) and chat_id < 0) or isinstance(chat_id, str)
        chat_us = (
            int(60_000_000 * scale / self.group_per_minute)
            if is_group
            else int(1_000_000 * scale / self.chat_per_second)
        )
        return global_us, chat_us


DEGRADED_SLACK = 0.1
"""Extra share of every interval while counting in process: a sender whose limiter node
is away spends its loop on reconnects, so its sends leave with more jitter than the
limits' own ``margin`` absorbs (a real run: two sends to one chat granted 1.02 s apart
reached Telegram under 1 s apart, and got a 429). Degraded mode is rare; it gives up a
tenth of its rate rather than risk Telegram's 429."""
PAUSE_SEEN = 1.0
"""Seconds of a global wait past which it is the bot's 429 pause (no budget's wait is
longer than one interval): ``RateLimiter.acquire`` answers ``PAUSED`` instead of waiting."""
PAUSED = "paused"  # acquire's answer then: nothing granted, the caller waits it out
LOCAL_CHATS_MAX = 4096  # local per-chat schedules kept before the expired ones are dropped


def now_us() -> int:
    return time.monotonic_ns() // 1000


class LocalBudget:
    """The limiter's state kept in process: every chat's schedule (each grant, shared or
    not, is mirrored here and checked first), the global schedule while counting in
    process, and the 429 waits Telegram asked for."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.tat_global = 0  # in-process schedules (µs, monotonic clock)
        self.tat_chat: dict[int | str, int] = {}
        self.flood_global_until = 0.0  # in-process 429 waits (monotonic seconds)
        self.flood_chat_until: dict[int | str, float] = {}
        self.grants = 0  # sends granted in process
        self.arrivals = ArrivalGuard()  # every grant's time, to judge its answer's

    def own_wait_us(self, chat_id: int | str) -> int:
        """How long the chat's own schedule holds its next send (0: it may go)."""
        _, chat_us = self.limits.intervals_us(chat_id)
        ok, _, wait = gcra(now_us(), self.tat_chat.get(chat_id, 0), chat_us, LATE_CREDIT_US)
        return 0 if ok else wait

    def flood_wait(self, chat_id: int | str) -> tuple[float, float]:
        """(global, chat) seconds left of the 429 waits recorded here."""
        now = time.monotonic()
        wait_g = max(0.0, self.flood_global_until - now)
        until = self.flood_chat_until.get(chat_id)
        wait_c = 0.0
        if until is not None:
            wait_c = max(0.0, until - now)
            if wait_c == 0.0:
                del self.flood_chat_until[chat_id]
        return wait_g, wait_c

    def record_flood(self, chat_id: int | str, until: float, whole_bot: bool) -> None:
        self.flood_chat_until[chat_id] = max(self.flood_chat_until.get(chat_id, 0.0), until)
        if whole_bot:
            self.flood_global_until = max(self.flood_global_until, until)
        if len(self.flood_chat_until) > LOCAL_CHATS_MAX:
            now = time.monotonic()
            self.flood_chat_until = {c: u for c, u in self.flood_chat_until.items() if u > now}

    def note_pause(self, wait_g: float) -> None:
        """A global wait from Redis (seconds): of ``PAUSE_SEEN`` or more it is the bot's
        429 pause, set by another sender: kept here too, for this sender's lanes."""
        if wait_g >= PAUSE_SEEN:
            until = time.monotonic() + wait_g
            self.flood_global_until = max(self.flood_global_until, until)

    def pause_left(self) -> float:
        """Seconds left of the bot's 429 pause when ``PAUSE_SEEN`` or more, else 0."""
        left = self.flood_global_until - time.monotonic()
        return left if left >= PAUSE_SEEN else 0.0

    def take(self, chat_id: int | str, share_us: int) -> tuple[float, float]:
        """The script's arithmetic in process, at ``share_us`` for the bot (seconds to
        wait, (0, 0) when granted)."""
        now = now_us()
        _, chat_us = self.limits.intervals_us(chat_id)
        share = int(share_us * (1 + DEGRADED_SLACK))
        # The chat's next due time (from its last grant, shared or not) moves by the slack
        # at each check: grants to one chat are at least (1 + DEGRADED_SLACK) intervals
        # apart, the first one after the switch included.
        tat_c = self.tat_chat.get(chat_id, 0)
        tat_c += int(chat_us * DEGRADED_SLACK) if tat_c else 0
        push = self.arrivals.take_push()
        ok_g, tat_g, wait_g = gcra(now, self.tat_global, share, LATE_CREDIT_US, push)
        ok_c, tat_c, wait_c = gcra(now, tat_c, chat_us, LATE_CREDIT_US)
        if push:
            self.tat_global = tat_g if not ok_g else tat_g - share
        self.arrivals.told(IN_PROCESS, [now], push, chat_id if ok_g and ok_c else None)
        if not (ok_g and ok_c):
            return wait_g / 1_000_000, wait_c / 1_000_000
        self.tat_global = tat_g
        self._set_chat(chat_id, tat_c)
        self.grants += 1
        return 0.0, 0.0

    def mirror(self, chat_id: int | str, asked_us: int) -> None:
        """A shared grant for ``chat_id``, kept in process too: should Redis stop answering
        now, the chat's next send still waits its interval. Counted from when the call was
        sent (no later than Redis granted it), so in shared mode this schedule never holds
        a send that Redis would let go."""
        _, chat_us = self.limits.intervals_us(chat_id)
        self._set_chat(chat_id, max(self.tat_chat.get(chat_id, 0), asked_us + chat_us))

    def left(self, chat_id: int | str, at_us: int) -> int:
        """A send granted here left at ``at_us`` and Telegram took it: a late one shifts the
        schedules after it (``workers.sender.arrivals``). Returns the µs the bot's global
        schedule is to be pushed for it (0 for a send on time)."""
        before = self.arrivals.pushed_us
        for chat, shift in self.arrivals.answered(chat_id, at_us, now_us(), self.limits):
            if chat in self.tat_chat:
                self.tat_chat[chat] += shift
        return self.arrivals.pushed_us - before

    def _set_chat(self, chat_id: int | str, tat: int) -> None:
        self.tat_chat[chat_id] = tat
        if len(self.tat_chat) > LOCAL_CHATS_MAX:
            now = now_us()
            self.tat_chat = {c: t for c, t in self.tat_chat.items() if t > now}
