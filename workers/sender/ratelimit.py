"""Rate limits shared by every sender process: GCRA in one Lua call (state in Redis).

``workers.sender.limits.gcra`` is the script's pure mirror (held to it on real Redis);
Redis ``TIME`` is the only clock, so replicas with skewed clocks agree. Interval ``T =
period / limit``, burst 1: a window of one period holds at most ``limit`` grants, and
``workers.sender.arrivals`` pushes the grants after a send that reached Telegram late.

The limiter's keys share one hash tag, so on a Redis Cluster they live on one node. While
that node does not answer (a transient error, or no answer within ``LIMITER_TIMEOUT``,
twice ``CONFIRM_AFTER`` apart):

- **Standby** (a cluster): the senders take the budget from a standby set of the same
  keys (``Keys.rate_global(bot, k)``, tag ``{bot.sk}``) whose slot another node serves
  (``standby_index``: the first k whose slot is not served by the node of the bot's own
  set; a failover moves a node's slots together, so every sender picks the same k). The
  limits stay exact and shared: one node's outage costs the other partitions no rate.
  The first standby call pushes its schedule one global interval ahead (the grants the
  own set made before it stopped were at most one interval ago).
- **Degraded mode** (a single Redis, or the standby does not answer either): the same
  arithmetic in process (``LocalBudget``): each chat at its full limit (a chat's partition
  is leased by one sender, so that is exact; every grant is mirrored locally, so a switch
  sends nothing early), and the bot at this sender's share of the global limit
  (``share_interval_us``: ``floor(global / N)`` per second for N live senders, so N shares
  never sum past the limit in any window).

The own set is probed every ``PROBE_EVERY`` seconds, never once per send. The first grant
back there leaves the own set at one share for ``RECOVER_GRACE_MS``
(``Keys.rate_recovering``), the time every other sender needs to notice it is back; a
sender back from the standby also sets the standby's set to one share for as long, so
the senders still on it and the ones back never sum past the limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

import redis.asyncio as aioredis

from gateway.core.contracts import Keys
from gateway.runtime.redis_errors import as_connection_error, is_transient
from gateway.runtime.scripts import GCRA
from gateway.runtime.slots import SlotRefresher
from workers.sender.limits import (
    LATE_CREDIT_US,
    Limits,
    LocalBudget,
    now_us,
    share_interval_us,
)
from workers.sender.observe import count_flood
from workers.sender.standby import (
    CONFIRM_AFTER,
    LIMITER_TIMEOUT,
    PROBE_EVERY,
    RECOVER_GRACE_MS,
    STANDBY_RETRY,
    slow_standby,
    standby_index,
)
from workers.sender.waiting import BudgetQueue

log = logging.getLogger(__name__)


class RateLimiter:
    """Takes send budget from Redis; waits where needed, fairly (how the lanes wait:
    ``workers.sender.waiting.BudgetQueue``). While the limiter's node does not answer, the
    budget comes from the standby set or is counted in process (see the module
    docstring); ``senders`` says how many sender processes share the global limit (the
    live membership last seen; None when unknown, then ``assumed_senders``).
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
        self.limits = limits
        self._recent_floods: deque[tuple[float, int | str]] = deque(maxlen=16)
        self.senders = senders
        self.assumed_senders = assumed_senders
        self.degraded = False  # counting in process
        self.standby = 0  # > 0: taking the budget from that standby set
        self.standby_grants = 0  # sends granted by a standby set (tests, the stop log)
        self._standby_fresh = False  # on the standby, its schedule not pushed ahead yet
        self._standby_suspect: float | None = None  # monotonic: its first failure
        self._standby_retry_at = 0.0  # monotonic: no standby before (it failed twice)
        self._suspect_at: float | None = None  # monotonic: a first failure, not confirmed
        self._next_probe = 0.0  # monotonic: the next try of the own set while away
        self._slots = SlotRefresher(redis)
        self._answered_at = 0.0  # monotonic: when a call last started that Redis answered
        self._owe_recover = False  # back from degraded mode, no shared grant taken yet
        self.local = LocalBudget(limits)
        self._queue = BudgetQueue(
            lambda chat, counts: self.try_acquire(chat, counts=counts), self.local.pause_left
        )

    def set_limits(self, limits: Limits) -> None:
        """New limits (the registry changed the bot's own): the next grant uses them."""
        if limits != self.limits:
            self.limits = limits
            self.local.limits = limits

    @property
    def degraded_grants(self) -> int:
        """Sends granted in process (for tests and the stop log)."""
        return self.local.grants

    def live_senders(self) -> int:
        """Senders sharing the global limit: the membership last seen, else the assumed."""
        seen = self.senders()
        return max(1, seen if seen else self.assumed_senders)

    def _away(self) -> bool:
        return self.degraded or self.standby > 0 or self._suspect_at is not None

    async def try_acquire(self, chat_id: int | str, *, counts: bool = True) -> tuple[float, float]:
        """(global wait, chat wait) in seconds; (0, 0) means the budget was taken."""
        flood = self.local.flood_wait(chat_id)
        if flood != (0.0, 0.0):
            return flood  # a 429 recorded here: no need to ask Redis
        if counts:
            # This sender's own schedule for the chat (every grant, shared or not, is kept
            # here): after a switch either way the chat's next send still waits its turn.
            own_wait = self.local.own_wait_us(chat_id)
            if own_wait:
                return 0.0, own_wait / 1_000_000
        started = time.monotonic()
        started_us = now_us()
        if self._away():
            if started < self._next_probe:
                if self.standby:
                    return await self._from_standby(chat_id, counts, started_us)
                if self.degraded:
                    return self._local_take(chat_id, counts)
                return (self._next_probe - started if counts else 0.0), 0.0
            self._next_probe = started + PROBE_EVERY  # this call probes; the others wait
        try:
            async with asyncio.timeout(LIMITER_TIMEOUT):
                wait_g, wait_c = await self._shared(chat_id, counts, 0)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            self._failed(as_connection_error(exc), started)
            await self._slots.after_failure()
            if self.standby:
                return await self._from_standby(chat_id, counts, started_us)
            if self.degraded:
                return self._local_take(chat_id, counts)
            return (max(0.0, self._next_probe - time.monotonic()) if counts else 0.0), 0.0
        await self._answered(started)
        if counts:
            self._owe_recover = False
            if wait_g == 0 and wait_c == 0:
                self.local.mirror(chat_id, started_us)
        self.local.note_pause(wait_g)  # a 429 pause of the bot another sender met
        return wait_g, wait_c

    async def _from_standby(
        self, chat_id: int | str, counts: bool, started_us: int
    ) -> tuple[float, float]:
        """The budget from the standby set. A failure is asked again ``CONFIRM_AFTER``
        later (sends wait meanwhile: the first call after a node's failure often meets a
        connection the cluster client just closed); a second one counts in process."""
        now = time.monotonic()
        if self._standby_suspect is not None and now < self._standby_suspect + CONFIRM_AFTER:
            return (self._standby_suspect + CONFIRM_AFTER - now if counts else 0.0), 0.0
        try:
            async with asyncio.timeout(LIMITER_TIMEOUT):
                wait_g, wait_c = await self._shared(chat_id, counts, self.standby)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            await self._slots.after_failure()
            if self._standby_suspect is None:
                self._standby_suspect = time.monotonic()
                return (CONFIRM_AFTER if counts else 0.0), 0.0
            log.warning(
                "rate limiter: the standby set does not answer either (%s)",
                type(as_connection_error(exc)).__name__,
            )
            self.standby, self._standby_suspect = 0, None
            self._standby_retry_at = time.monotonic() + STANDBY_RETRY
            self._degrade(exc)
            return self._local_take(chat_id, counts)
        self._standby_suspect = None
        if counts:
            self._standby_fresh = False
            if wait_g == 0 and wait_c == 0:
                self.standby_grants += 1
                self.local.mirror(chat_id, started_us)
        return wait_g, wait_c

    async def _shared(self, chat_id: int | str, counts: bool, set_: int) -> tuple[float, float]:
        k, bot = self._keys, self._bot_id
        keys = [k.flood_wait(bot, None, set_), k.flood_wait(bot, chat_id, set_)]
        args: list[int] = []
        if counts:
            global_us, chat_us = self.limits.intervals_us(chat_id)
            keys += [
                k.rate_global(bot, set_),
                k.rate_chat(bot, chat_id, set_),
                k.rate_recovering(bot, set_),
            ]
            # On the own set, a probe or the first counted call after one not counted: if
            # Redis answers, this sender is back (the others may still count in process or
            # on the standby). On a fresh standby: one interval ahead.
            share = global_us if self._standby_fresh else 0
            if not set_:  # (a suspect sender's probe slows nobody: it never counted elsewhere)
                back = self.degraded or self.standby > 0 or self._owe_recover
                share = self._share_us() if back else 0
            push = self.local.arrivals.take_push()  # a late arrival's (workers.sender.arrivals)
            args = [global_us, chat_us, LATE_CREDIT_US, share, RECOVER_GRACE_MS, push]
        try:
            wait_g, wait_c, *at = await GCRA.run(self._redis, keys, args)
        except BaseException:
            self.local.arrivals.give_back(args[5] if args else 0)  # for the next call
            raise
        if args:  # a counted call: when it reached the budgets (Redis TIME), its grant
            granted = None if int(wait_g) or int(wait_c) else chat_id
            self.local.arrivals.told(set_, at, args[5], granted)
        return int(wait_g) / 1_000_000, int(wait_c) / 1_000_000

    def _share_us(self) -> int:
        lim = self.limits
        return share_interval_us(lim.global_per_second, self.live_senders(), lim.margin)

    def _failed(self, exc: BaseException, started: float) -> None:
        """A call to the own set that started at ``started`` failed: suspect Redis, or (a
        second failure, of a call sent after the first) turn to the standby or count in
        process."""
        if started < self._answered_at:
            return  # sent before Redis answered a later call: not a new outage
        now = time.monotonic()
        if self.degraded or self.standby:
            self._next_probe = now + PROBE_EVERY
            if self.degraded and now >= self._standby_retry_at:
                self._to_standby(exc)  # counting in process: the standby may answer now
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
        if not self._to_standby(exc):
            self._degrade(exc)

    def _to_standby(self, exc: BaseException) -> bool:
        """Take the budget from the standby set, if there is one (a cluster)."""
        standby = standby_index(self._redis, self._keys, self._bot_id)
        if not standby:
            return False
        self.standby, self._standby_fresh, self.degraded = standby, True, False
        log.warning(
            "rate limiter: its node does not answer (%s); taking the budget from the "
            "standby set %d on another node; probing every %.2fs",
            type(exc).__name__,
            standby,
            PROBE_EVERY,
        )
        return True

    def _degrade(self, exc: BaseException) -> None:
        self.degraded = True
        self._next_probe = time.monotonic() + PROBE_EVERY
        share = self._share_us()
        # A fresh in-process schedule one share ahead: the grants Redis made before it
        # stopped answering were at most one global interval ago.
        self.local.tat_global = now_us() + share
        log.warning(
            "rate limiter: Redis does not answer (%s); counting in process at %.1f/s, "
            "this sender's share of %g/s among %d sender(s); probing every %.2fs",
            type(exc).__name__,
            1_000_000 / share,
            self.limits.global_per_second,
            self.live_senders(),
            PROBE_EVERY,
        )

    async def _answered(self, started: float) -> None:
        self._answered_at = max(self._answered_at, started)
        self._suspect_at = None
        if self.standby:
            standby, self.standby = self.standby, 0
            self._owe_recover = True
            log.warning(
                "rate limiter: its node answers again; shared limits (%d sends granted by "
                "the standby set)",
                self.standby_grants,
            )
            try:
                await slow_standby(
                    *(self._redis, self._keys, self._bot_id, standby, self._share_us()),
                    grace_ms=RECOVER_GRACE_MS,
                    timeout=LIMITER_TIMEOUT,
                )
            except Exception as exc:
                if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                    raise
                log.info("standby set not slowed (%s)", type(exc).__name__)
        if not self.degraded:
            return
        self.degraded = False
        self._owe_recover = True
        log.warning(
            "rate limiter: Redis answers again; shared limits (%d sends counted in process)",
            self.local.grants,
        )

    def _local_take(self, chat_id: int | str, counts: bool) -> tuple[float, float]:
        """The script's arithmetic in process, at this sender's share of the global limit."""
        if not counts:
            return 0.0, 0.0  # 429 waits were checked before; nothing else to count
        return self.local.take(chat_id, self._share_us())

    async def acquire(self, chat_id: int | str, *, counts: bool = True) -> str:
        """Return once one send to ``chat_id`` may go: the limit that made it wait first,
        or ``PAUSED`` during the bot's 429 pause (``workers.sender.waiting``)."""
        return await self._queue.acquire(chat_id, counts)

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
        self.local.record_flood(chat_id, now + retry_after, whole_bot=scope is None)
        if (self.degraded or self._suspect_at is not None) and now < self._next_probe:
            return scope is None  # recorded here; Redis is not asked until the next probe
        px = max(1, int(retry_after * 1000))
        set_ = self.standby  # while on the standby, the senders there see it
        pipe = self._redis.pipeline(transaction=False)  # one slot: the set's hash tag
        pipe.set(self._keys.flood_wait(self._bot_id, chat_id, set_), "1", px=px)
        if scope is None:
            pipe.set(self._keys.flood_wait(self._bot_id, None, set_), "1", px=px)
        try:
            async with asyncio.timeout(LIMITER_TIMEOUT):
                await pipe.execute()
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            self._failed(as_connection_error(exc), now)
            await self._slots.after_failure()
            return scope is None
        await count_flood(self._redis, self._keys, LIMITER_TIMEOUT)
        return scope is None
