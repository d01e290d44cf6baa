"""Retention never removes entries that are unread or pending, in any consumer group."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import Keys
from gateway.runtime.retention import safe_trim_id, trim_stream

pytestmark = pytest.mark.integration

S = Keys("tg", 1).updates(0)  # key names come from Keys only


async def fill(redis: aioredis.Redis, n: int) -> list[str]:
    await redis.xgroup_create(S, "workers", id="0", mkstream=True)
    return [(await redis.xadd(S, {"i": str(i)}, id=f"{1000 + i}-0")).decode() for i in range(n)]


async def remaining(redis: aioredis.Redis) -> list[int]:
    return [int(f[b"i"]) for _, f in await redis.xrange(S)]


async def test_unread_entries_are_kept(redis: aioredis.Redis) -> None:
    await fill(redis, 10)
    await redis.xreadgroup("workers", "w", {S: ">"}, count=4)
    await redis.xack(S, "workers", "1000-0", "1001-0", "1002-0", "1003-0")
    removed = await trim_stream(redis, S, 1, approximate=False)
    assert removed == 4
    assert await remaining(redis) == list(range(4, 10))


async def test_pending_entries_are_kept(redis: aioredis.Redis) -> None:
    await fill(redis, 10)
    await redis.xreadgroup("workers", "w", {S: ">"}, count=8)
    await redis.xack(S, "workers", *[f"{1000 + i}-0" for i in (0, 1, 3, 4, 5, 6, 7)])
    # 2 is still pending (a consumer died holding it): nothing from 2 on may go
    assert await safe_trim_id(redis, S, 1) == "1002-0"
    await trim_stream(redis, S, 1, approximate=False)
    assert await remaining(redis) == list(range(2, 10))


async def test_every_group_counts(redis: aioredis.Redis) -> None:
    """A tester's recording group that lags behind keeps what it has not read."""
    await fill(redis, 6)
    await redis.xgroup_create(S, "recorder", id="0")
    await redis.xreadgroup("workers", "w", {S: ">"}, count=6)
    await redis.xack(S, "workers", *[f"{1000 + i}-0" for i in range(6)])
    await redis.xreadgroup("recorder", "r", {S: ">"}, count=2)
    await redis.xack(S, "recorder", "1000-0", "1001-0")
    await trim_stream(redis, S, 1, approximate=False)
    assert await remaining(redis) == [2, 3, 4, 5]


async def test_young_entries_are_kept(redis: aioredis.Redis) -> None:
    await redis.xgroup_create(S, "workers", id="0", mkstream=True)
    for i in range(3):
        await redis.xadd(S, {"i": str(i)})
    await redis.xreadgroup("workers", "w", {S: ">"}, count=3)
    await redis.xack(S, "workers", *[eid for eid, _ in await redis.xrange(S)])
    assert await trim_stream(redis, S, 3600, approximate=False) == 0
    assert await trim_stream(redis, S, 0, approximate=False) == 0  # 0 = keep forever
    assert len(await remaining(redis)) == 3
