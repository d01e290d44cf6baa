"""Rate limits shared by every sender process: GCRA in one Lua call (state in Redis).

Pure arithmetic (``gcra``) mirrors the script (``gateway.runtime.scripts.GCRA``) and is
unit-tested, and held to it on real Redis; the Redis clock (``TIME``) is the only clock,
so replicas with skewed clocks still agree.
Emission interval ``T = period / limit``; burst 1 (no bursts): a sliding window of one
period never holds more than ``limit`` sends when ``margin`` ≥ one interval's slack.

Degraded mode: the limiter's keys share one hash tag, so on a Redis Cluster they live on
one node. While that node does not answer (a transient error, or no answer within
``LIMITER_TIMEOUT``) a sender goes on with the same arithmetic in process: each chat at
its full limit (a chat's partition is leased by one sender, so that is exact; its last
shared grant is mirrored locally, so the switch sends nothing early), and the bot at this
sender's share of the global limit (``share_interval_us``: ``floor(global / N)`` per
second for N live senders, so N shares never sum past the limit in any window). Redis is
probed again every ``PROBE_EVERY`` seconds, never once per send. The first grant back
in Redis leaves the rate at one share for ``RECOVER_GRACE_MS`` (``Keys.rate_recovering``),
the time every other degraded sender needs to notice Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.core.contracts import COUNTER_MINUTE_TTL, Keys
from gateway.runtime.redis_errors import as_connection_error, is_transient
from gateway.runtime.scripts import GCRA
from gateway.runtime.slots import SlotRefresher

log = logging.getLogger(__name__)

LATE_CREDIT_US = 2_000  # lateness a send may make up (bench: sends land ~0.6 ms late)
LIMITER_TIMEOUT = 1.0
"""Seconds a limiter call may take; past it (or on a transient error) the sender counts
in process (degraded mode) instead of waiting for the limiter's node. Only the call that
finds the node away (one per probe) waits this long; the others count in process."""
PROBE_EVERY = 0.75
"""Seconds between tries of the shared limiter while degraded."""
CONFIRM_AFTER = 0.25
"""Seconds after a first failure before Redis is asked again; only if that fails too does
the sender count in process (until then its sends wait): a blip seen by this sender
alone, while the others still take the full rate from Redis, adds nothing."""
RECOVER_GRACE_MS = 5000
"""How long the shared limiter stays at one share after a sender came back: longer than
any other degraded sender needs to probe Redis and come back too (``PROBE_EVERY`` plus a
``LIMITER_TIMEOUT``), and than the cluster clients' reconnects after a node's restart,
during which a sender may fail once more and count in process again."""
DEGRADED_SLACK = 0.1
"""Extra share of every interval while counting in process: a sender whose limiter node
is away spends its loop on reconnects, so its sends leave with more jitter than the
limits' own ``margin`` absorbs (a real run: two sends to one chat granted 1.02 s apart
reached Telegram under 1 s apart, and got a 429). Degraded mode is rare; it gives up a
tenth of its rate rather than risk Telegram's 429."""
LOCAL_CHATS_MAX = 4096  # local per-chat schedules kept before the expired ones are dropped


def gcra(now_us: int, tat_us: int, interval_us: int, credit_us: int = 0) -> tuple[bool, int, int]:
    """(allowed, new TAT, wait µs) for one limit (pure mirror of the script).

    A send that comes up to ``credit_us`` late keeps the schedule (the next is due one
    interval after the *scheduled* time, not after now), so the small lateness of every
    real send does not add up; ``credit_us`` ≪ interval, so no burst ever forms.
    """
    tat = max(tat_us, now_us - credit_us)
    if tat > now_us:
        return False, tat_us, tat - now_us
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


def _now_us() -> int:
    return time.monotonic_ns() // 1000


class RateLimiter:
    """Takes send budget from Redis; waits where needed, fairly.

    A lane whose chat has no budget sleeps on its own. Lanes waiting only for the global
    budget queue on one in-process lock (FIFO), so one of them polls Redis at a time
    instead of all of them at every tick. While Redis does not answer, the budget is
    counted in process (see the module docstring); ``senders`` says how many sender
    processes share the global limit (the live membership last seen; None when unknown,
    then ``assumed_senders``).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        bot_id: int,
        limits: Limits,
        *,
        senders: Callable[[], int | None] = lambda: None,
        assumed_senders: int = 1,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._bot_id = bot_id
        self._limits = limits
        self._global_queue = asyncio.Lock()
        self._recent_floods: deque[tuple[float, int | str]] = deque(maxlen=16)
        self.senders = senders
        self.assumed_senders = assumed_senders
        self.degraded = False  # counting in process
        self.degraded_grants = 0  # sends granted in process (for tests and the stop log)
        self._suspect_at: float | None = None  # monotonic: a first failure, not confirmed
        self._next_probe = 0.0  # monotonic: the next try of Redis while degraded or suspect
        self._slots = SlotRefresher(redis)
        self._answered_at = 0.0  # monotonic: when a call last started that Redis answered
        self._owe_recover = False  # back from degraded mode, no shared grant taken yet
        self._tat_global = 0  # in-process schedules (µs, monotonic clock)
        self._tat_chat: dict[int | str, int] = {}
        self._flood_global_until = 0.0  # in-process 429 waits (monotonic seconds)
        self._flood_chat_until: dict[int | str, float] = {}

    def live_senders(self) -> int:
        """Senders sharing the global limit: the membership last seen, else the assumed."""
        seen = self.senders()
        return max(1, seen if seen else self.assumed_senders)

    async def try_acquire(self, chat_id: int | str, *, counts: bool = True) -> tuple[float, float]:
        """(global wait, chat wait) in seconds; (0, 0) means the budget was taken."""
        flood = self._local_flood(chat_id)
        if flood != (0.0, 0.0):
            return flood  # a 429 recorded here: no need to ask Redis
        if counts:
            # This sender's own schedule for the chat (every grant, shared or not, is kept
            # here): after a switch either way the chat's next send still waits its turn.
            _, chat_us = self._limits.intervals_us(chat_id)
            tat = self._tat_chat.get(chat_id, 0)
            ok, _, own_wait = gcra(_now_us(), tat, chat_us, LATE_CREDIT_US)
            if not ok:
                return 0.0, own_wait / 1_000_000
        started = time.monotonic()
        started_us = _now_us()
        if self.degraded or self._suspect_at is not None:
            if started < self._next_probe:
                if self.degraded:
                    return self._local_take(chat_id, counts)
                return (self._next_probe - started if counts else 0.0), 0.0
            self._next_probe = started + PROBE_EVERY  # this call probes; the others wait
        try:
            async with asyncio.timeout(LIMITER_TIMEOUT):
                wait_g, wait_c = await self._shared(chat_id, counts)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            self._failed(as_connection_error(exc), started)
            await self._slots.after_failure()
            if self.degraded:
                return self._local_take(chat_id, counts)
            return (max(0.0, self._next_probe - time.monotonic()) if counts else 0.0), 0.0
        self._answered(started)
        if counts:
            self._owe_recover = False
            if wait_g == 0 and wait_c == 0:
                self._mirror_chat(chat_id, started_us)
        return wait_g, wait_c

    async def _shared(self, chat_id: int | str, counts: bool) -> tuple[float, float]:
        k = self._keys
        keys = [k.flood_wait(self._bot_id, None), k.flood_wait(self._bot_id, chat_id)]
        args: list[int] = []
        if counts:
            global_us, chat_us = self._limits.intervals_us(chat_id)
            keys += [
                k.rate_global(self._bot_id),
                k.rate_chat(self._bot_id, chat_id),
                k.rate_recovering(self._bot_id),
            ]
            # A probe, or the first counted call after one that was not counted: if Redis
            # answers, this sender is back and the others may still count in process.
            share = self._share_us() if (self.degraded or self._owe_recover) else 0
            args = [global_us, chat_us, LATE_CREDIT_US, share, RECOVER_GRACE_MS]
        wait_g, wait_c = await GCRA.run(self._redis, keys, args)
        return int(wait_g) / 1_000_000, int(wait_c) / 1_000_000

    def _share_us(self) -> int:
        lim = self._limits
        return share_interval_us(lim.global_per_second, self.live_senders(), lim.margin)

    def _failed(self, exc: BaseException, started: float) -> None:
        """A call that started at ``started`` failed: suspect Redis, or (a second failure,
        of a call sent after the first) count in process."""
        if started < self._answered_at:
            return  # sent before Redis answered a later call: not a new outage
        now = time.monotonic()
        if self.degraded:
            self._next_probe = now + PROBE_EVERY
            return
        if self._suspect_at is None or started < self._suspect_at:
            if self._suspect_at is None:
                self._suspect_at = now
                log.info(
                    "rate limiter: Redis did not answer (%s); asking again", type(exc).__name__
                )
            self._next_probe = max(self._next_probe, self._suspect_at + CONFIRM_AFTER)
            return
        self._suspect_at = None
        self._next_probe = now + PROBE_EVERY
        self.degraded = True
        share = self._share_us()
        # A fresh in-process schedule one share ahead: the grants Redis made before it
        # stopped answering were at most one global interval ago.
        self._tat_global = _now_us() + share
        n = self.live_senders()
        log.warning(
            "rate limiter: Redis does not answer (%s); counting in process at %.1f/s, "
            "this sender's share of %g/s among %d sender(s); probing every %.2fs",
            type(exc).__name__,
            1_000_000 / share,
            self._limits.global_per_second,
            n,
            PROBE_EVERY,
        )

    def _answered(self, started: float) -> None:
        self._answered_at = max(self._answered_at, started)
        self._suspect_at = None
        if not self.degraded:
            return
        self.degraded = False
        self._owe_recover = True
        log.warning(
            "rate limiter: Redis answers again; shared limits (%d sends counted in process)",
            self.degraded_grants,
        )

    def _local_flood(self, chat_id: int | str) -> tuple[float, float]:
        now = time.monotonic()
        wait_g = max(0.0, self._flood_global_until - now)
        until = self._flood_chat_until.get(chat_id)
        wait_c = 0.0
        if until is not None:
            wait_c = max(0.0, until - now)
            if wait_c == 0.0:
                del self._flood_chat_until[chat_id]
        return wait_g, wait_c

    def _local_take(self, chat_id: int | str, counts: bool) -> tuple[float, float]:
        """The script's arithmetic in process, at this sender's share of the global limit."""
        if not counts:
            return 0.0, 0.0  # 429 waits were checked before; nothing else to count
        now = _now_us()
        _, chat_us = self._limits.intervals_us(chat_id)
        share = int(self._share_us() * (1 + DEGRADED_SLACK))
        # The chat's next due time (from its last grant, shared or not) moves by the slack
        # at each check: grants to one chat are at least (1 + DEGRADED_SLACK) intervals
        # apart, the first one after the switch included.
        tat_c = self._tat_chat.get(chat_id, 0)
        tat_c += int(chat_us * DEGRADED_SLACK) if tat_c else 0
        ok_g, tat_g, wait_g = gcra(now, self._tat_global, share, LATE_CREDIT_US)
        ok_c, tat_c, wait_c = gcra(now, tat_c, chat_us, LATE_CREDIT_US)
        if not (ok_g and ok_c):
            return wait_g / 1_000_000, wait_c / 1_000_000
        self._tat_global = tat_g
        self._set_chat(chat_id, tat_c)
        self.degraded_grants += 1
        return 0.0, 0.0

    def _mirror_chat(self, chat_id: int | str, asked_us: int) -> None:
        """A shared grant for ``chat_id``, kept in process too: should Redis stop answering
        now, the chat's next send still waits its interval. Counted from when the call was
        sent (no later than Redis granted it), so in shared mode this schedule never holds
        a send that Redis would let go."""
        _, chat_us = self._limits.intervals_us(chat_id)
        self._set_chat(chat_id, max(self._tat_chat.get(chat_id, 0), asked_us + chat_us))

    def _set_chat(self, chat_id: int | str, tat: int) -> None:
        self._tat_chat[chat_id] = tat
        if len(self._tat_chat) > LOCAL_CHATS_MAX:
            now = _now_us()
            self._tat_chat = {c: t for c, t in self._tat_chat.items() if t > now}

    async def acquire(self, chat_id: int | str, *, counts: bool = True) -> str:
        """Return once one send to ``chat_id`` may go (its budget is taken): the limit that
        made it wait first (``none``, ``global``, ``chat`` or ``group``, for the metrics)."""
        scope = "none"
        while True:
            wait_g, wait_c = await self.try_acquire(chat_id, counts=counts)
            if wait_g == 0 and wait_c == 0:
                return scope
            if wait_c >= wait_g:
                if scope == "none":
                    scope = "group" if isinstance(chat_id, str) or chat_id < 0 else "chat"
                await asyncio.sleep(wait_c)  # this chat's own wait: others go on
                continue
            if scope == "none":
                scope = "global"
            # The wait counts from when it was told, not from this lane's turn at the
            # queue: after a 429's pause the lanes behind the first go one by one at once,
            # instead of each sleeping the whole pause again.
            due = time.monotonic() + wait_g
            async with self._global_queue:  # only the global budget is missing: queue up
                while True:
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    wait_g, wait_c = await self.try_acquire(chat_id, counts=counts)
                    if wait_g == 0 and wait_c == 0:
                        return scope
                    if wait_c >= wait_g:
                        break
                    due = time.monotonic() + wait_g

    async def _count_flood(self) -> None:
        """The total and this minute's bucket (``/stats`` sums the last hour's)."""
        bucket = self._keys.counter_minute("flood_waits", int(time.time()) // 60)
        pipe = self._redis.pipeline(transaction=False)  # two slots on a cluster
        pipe.incr(self._keys.counter("flood_waits"))
        pipe.incr(bucket)
        pipe.expire(bucket, COUNTER_MINUTE_TTL)
        await pipe.execute()

    async def flood(self, chat_id: int | str, retry_after: float) -> bool:
        """Record Telegram's 429 so every replica waits; True if it looked global.

        Telegram does not say whether a 429 is per chat or per bot. One chat's 429 waits
        for that chat; 429s on several chats within a second pause the whole bot. The
        wait is kept in process as well, so it holds while Redis does not answer.
        """
        now = time.monotonic()
        self._recent_floods.append((now, chat_id))
        chats = {c for t, c in self._recent_floods if now - t < 1.0}
        scope: int | str | None = None if len(chats) >= 2 else chat_id
        until = now + retry_after
        self._flood_chat_until[chat_id] = max(self._flood_chat_until.get(chat_id, 0.0), until)
        if scope is None:
            self._flood_global_until = max(self._flood_global_until, until)
        if len(self._flood_chat_until) > LOCAL_CHATS_MAX:
            self._flood_chat_until = {c: u for c, u in self._flood_chat_until.items() if u > now}
        if (self.degraded or self._suspect_at is not None) and now < self._next_probe:
            return scope is None  # recorded here; Redis is not asked until the next probe
        px = max(1, int(retry_after * 1000))
        pipe = self._redis.pipeline(transaction=False)  # one slot: the bot's hash tag
        pipe.set(self._keys.flood_wait(self._bot_id, chat_id), "1", px=px)
        if scope is None:
            pipe.set(self._keys.flood_wait(self._bot_id, None), "1", px=px)
        try:
            async with asyncio.timeout(LIMITER_TIMEOUT):
                await pipe.execute()
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            self._failed(as_connection_error(exc), now)
            await self._slots.after_failure()
            return scope is None
        try:  # a counter for ops, on whichever node holds it: never worth a failure
            async with asyncio.timeout(LIMITER_TIMEOUT):
                await self._count_flood()
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            log.info("flood_waits counter not incremented (%s)", type(exc).__name__)
        return scope is None
