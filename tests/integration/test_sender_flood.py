"""A 429 that pauses the whole bot pauses it once: the lanes queued behind it go when it
ends, not one flood wait after another (docs/bench-e2e.md, "Why no per-chat limit")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import Keys
from tests.helpers import BOT_ID
from workers.sender import ratelimit
from workers.sender.limits import Limits
from workers.sender.ratelimit import RateLimiter

pytestmark = pytest.mark.integration

LANES = 5
RETRY_AFTER = 1


class SleepLog:
    """``asyncio`` as the limiter sees it, with every sleep it asks for written down."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(seconds)


async def test_lanes_queued_behind_a_global_flood_wait_go_when_it_ends(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """429s on two chats within a second pause the bot for ``retry_after`` (1 s). Five
    lanes of other chats wait for the global budget, queued one behind the other; once the
    pause is over each goes at once. (Each used to sleep its own first wait again when its
    turn came: the fifth replied about five pauses late; on a loaded 2-core machine
    bench.e2e saw replies 60 s late after a 1 s retry_after.)"""
    limiter = RateLimiter(
        redis, Keys("tg", 4), BOT_ID, Limits(global_per_second=1000, chat_per_second=1)
    )
    assert not await limiter.flood(7001, RETRY_AFTER)
    assert await limiter.flood(7002, RETRY_AFTER)  # a second chat: the whole bot waits
    log = SleepLog()
    monkeypatch.setattr(ratelimit, "asyncio", log)
    scopes = await asyncio.wait_for(
        asyncio.gather(*(limiter.acquire(8000 + i) for i in range(LANES))), timeout=30
    )
    assert scopes == ["global"] * LANES
    # One pause in all, whoever slept it; queued lanes add no pause of their own.
    assert sum(log.slept) <= RETRY_AFTER + 0.5, log.slept
