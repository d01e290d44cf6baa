"""Rate limits shared by every sender process: GCRA in one Lua call (state in Redis).

Pure arithmetic (``gcra``) mirrors the script and is unit-tested; the Redis clock
(``TIME``) is the only clock, so replicas with skewed clocks still agree.
Emission interval ``T = period / limit``; burst 1 (no bursts): a sliding window of one
period never holds more than ``limit`` sends when ``margin`` ≥ one interval's slack.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.contracts import Keys

# KEYS: flood_global, flood_chat, [global TAT, chat TAT].
# ARGV: [global interval µs, chat interval µs] (absent for calls that do not count).
# Returns {global wait µs, chat wait µs}; both 0 means allowed and both TATs advanced.
# Keys get a TTL so idle chats cost no memory.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait_g, wait_c = 0, 0
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then wait_g = ttl * 1000 end
ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then wait_c = ttl * 1000 end
if #KEYS < 4 or wait_g > 0 or wait_c > 0 then return {wait_g, wait_c} end
local credit = tonumber(ARGV[3])
local tat_g = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now - credit)
local tat_c = math.max(tonumber(redis.call('GET', KEYS[4]) or '0'), now - credit)
if tat_g > now or tat_c > now then
  return {math.max(tat_g - now, 0), math.max(tat_c - now, 0)}
end
tat_g = tat_g + tonumber(ARGV[1])
tat_c = tat_c + tonumber(ARGV[2])
redis.call('SET', KEYS[3], tostring(tat_g), 'PX', math.ceil((tat_g - now) / 1000) + 1000)
redis.call('SET', KEYS[4], tostring(tat_c), 'PX', math.ceil((tat_c - now) / 1000) + 1000)
return {0, 0}
"""


LATE_CREDIT_US = 2_000  # lateness a send may make up (bench: sends land ~0.6 ms late)


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


class RateLimiter:
    """Takes send budget from Redis; waits where needed, fairly.

    A lane whose chat has no budget sleeps on its own. Lanes waiting only for the global
    budget queue on one in-process lock (FIFO), so one of them polls Redis at a time
    instead of all of them at every tick.
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, bot_id: int, limits: Limits) -> None:
        self._redis = redis
        self._keys = keys
        self._bot_id = bot_id
        self._limits = limits
        self._script = redis.register_script(GCRA_LUA)
        self._global_queue = asyncio.Lock()
        self._recent_floods: deque[tuple[float, int | str]] = deque(maxlen=16)

    async def try_acquire(self, chat_id: int | str, *, counts: bool = True) -> tuple[float, float]:
        """(global wait, chat wait) in seconds; (0, 0) means the budget was taken."""
        k = self._keys
        keys = [k.flood_wait(self._bot_id, None), k.flood_wait(self._bot_id, chat_id)]
        args: list[int] = []
        if counts:
            global_us, chat_us = self._limits.intervals_us(chat_id)
            keys += [k.rate_global(self._bot_id), k.rate_chat(self._bot_id, chat_id)]
            args = [global_us, chat_us, LATE_CREDIT_US]
        wait_g, wait_c = await self._script(keys=keys, args=args)
        return int(wait_g) / 1_000_000, int(wait_c) / 1_000_000

    async def acquire(self, chat_id: int | str, *, counts: bool = True) -> None:
        """Return once one send to ``chat_id`` may go (its budget is taken)."""
        while True:
            wait_g, wait_c = await self.try_acquire(chat_id, counts=counts)
            if wait_g == 0 and wait_c == 0:
                return
            if wait_c >= wait_g:
                await asyncio.sleep(wait_c)  # this chat's own wait: others go on
                continue
            async with self._global_queue:  # only the global budget is missing: queue up
                while True:
                    await asyncio.sleep(wait_g)
                    wait_g, wait_c = await self.try_acquire(chat_id, counts=counts)
                    if wait_g == 0 and wait_c == 0:
                        return
                    if wait_c >= wait_g:
                        break

    async def flood(self, chat_id: int | str, retry_after: float) -> bool:
        """Record Telegram's 429 so every replica waits; True if it looked global.

        Telegram does not say whether a 429 is per chat or per bot. One chat's 429 waits
        for that chat; 429s on several chats within a second pause the whole bot.
        """
        now = time.monotonic()
        self._recent_floods.append((now, chat_id))
        chats = {c for t, c in self._recent_floods if now - t < 1.0}
        scope: int | str | None = None if len(chats) >= 2 else chat_id
        px = max(1, int(retry_after * 1000))
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._keys.flood_wait(self._bot_id, chat_id), "1", px=px)
        if scope is None:
            pipe.set(self._keys.flood_wait(self._bot_id, None), "1", px=px)
        pipe.incr(self._keys.counter("flood_waits"))
        await pipe.execute()
        return scope is None
