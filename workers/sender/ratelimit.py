"""Rate limits shared by every sender process: GCRA in one Lua call (state in Redis).

Pure arithmetic (``workers.sender.limits.gcra``) mirrors the script
(``gateway.runtime.scripts.GCRA``) and is unit-tested, and held to it on real Redis; the
Redis clock (``TIME``) is the only clock, so replicas with skewed clocks still agree.
Emission interval ``T = period / limit``; burst 1 (no bursts): a sliding window of one
period never holds more than ``limit`` sends when ``margin`` ≥ one interval's slack.

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
    PAUSED,
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

log = logging.getLogger(__name__)


class RateLimiter:
    """Takes send budget from Redis; waits where needed, fairly.

    A lane whose chat has no budget sleeps on its own. Lanes waiting only for the global
    budget queue on one in-process lock (FIFO), so one of them polls Redis at a time
    instead of all of them at every tick. While the limiter's node does not answer, the
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
        self._global_queue = asyncio.Lock()
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
            # On the own set, a probe or the first counted call after one that was not
            # counted: if Redis answers, this sender is back and the others may still count
            # in process or on the standby. On a fresh standby: one interval ahead.
            if set_:
                share = global_us if self._standby_fresh else 0
            else:
                # (A suspect sender, confirming a first failure, never counted anywhere
                # else: its probe slows nobody.)
                back = self.degraded or self.standby > 0 or self._owe_recover
                share = self._share_us() if back else 0
            args = [global_us, chat_us, LATE_CREDIT_US, share, RECOVER_GRACE_MS]
        wait_g, wait_c = await GCRA.run(self._redis, keys, args)
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
        """Return once one send to ``chat_id`` may go (its budget is taken): the limit that
        made it wait first (``none``, ``global``, ``chat`` or ``group``, for the metrics);
        or at once ``PAUSED`` (nothing taken) while the bot as a whole waits out a 429
        (``LocalBudget.pause_left``): the caller waits it out where it holds up no other bot."""
        scope = "none"
        while True:
            wait_g, wait_c = await self.try_acquire(chat_id, counts=counts)
            if wait_g == 0 and wait_c == 0:
                return scope
            if wait_g > wait_c and self.local.pause_left():
                return PAUSED
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
                    if wait_c >= wait_g or self.local.pause_left():
                        break  # the chat's own wait, or the bot's 429 pause (see above)
                    due = time.monotonic() + wait_g

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
        try:  # a counter for ops, on whichever node holds it: never worth a failure
            async with asyncio.timeout(LIMITER_TIMEOUT):
                await count_flood(self._redis, self._keys)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            log.info("flood_waits counter not incremented (%s)", type(exc).__name__)
        return scope is None
