"""Rate limits shared by every sender process: GCRA in one Lua call (state in Redis).

Pure arithmetic (``gcra``) mirrors the script and is unit-tested; the Redis clock
(``TIME``) is the only clock, so replicas with skewed clocks still agree.
Emission interval ``T = period / limit``; burst 1 (no bursts): a sliding window of one
period never holds more than ``limit`` sends when ``margin`` ≥ one interval's slack.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.contracts import Keys

# KEYS: flood_global, flood_chat, then one TAT key per limit.
# ARGV: per limit key: emission interval in microseconds.
# Returns 0 (allowed; TATs advanced) or the microseconds to wait.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
for i = 1, 2 do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl > 0 then wait = math.max(wait, ttl * 1000) end
end
if wait > 0 then return wait end
local tats = {}
for i = 3, #KEYS do
  local interval = tonumber(ARGV[i - 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  if tat > now then wait = math.max(wait, tat - now) end
  tats[i] = tat + interval
end
if wait > 0 then return wait end
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], tostring(tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1000)
end
return 0
"""


def gcra(now_us: int, tat_us: int, interval_us: int) -> tuple[bool, int, int]:
    """(allowed, new TAT, wait µs) for one limit with no burst (pure mirror of the script)."""
    tat = max(tat_us, now_us)
    if tat > now_us:
        return False, tat_us, tat - now_us
    return True, tat + interval_us, 0


@dataclass(frozen=True, slots=True)
class Limits:
    global_per_second: float = 30.0
    chat_per_second: float = 1.0
    group_per_minute: float = 20.0
    margin: float = 0.05  # fraction of headroom under each limit

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
    """Asks Redis whether one send to ``chat_id`` may go now."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, bot_id: int, limits: Limits) -> None:
        self._redis = redis
        self._keys = keys
        self._bot_id = bot_id
        self._limits = limits
        self._script = redis.register_script(GCRA_LUA)

    async def acquire(self, chat_id: int | str, *, counts: bool = True) -> float:
        """0.0 if the send may go now (budget taken), else seconds to wait first."""
        k = self._keys
        keys = [k.flood_wait(self._bot_id, None), k.flood_wait(self._bot_id, chat_id)]
        args: list[int] = []
        if counts:
            global_us, chat_us = self._limits.intervals_us(chat_id)
            keys += [k.rate_global(self._bot_id), k.rate_chat(self._bot_id, chat_id)]
            args = [global_us, chat_us]
        wait = await self._script(keys=keys, args=args)
        return int(wait) / 1_000_000

    async def flood(self, chat_id: int | str | None, retry_after: float) -> None:
        """Record Telegram's 429 so every replica waits (chat scope, or global if None)."""
        key = self._keys.flood_wait(self._bot_id, chat_id)
        await self._redis.set(key, "1", px=max(1, int(retry_after * 1000)))
