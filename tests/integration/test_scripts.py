"""A script called on its own (``Script.run``) loads itself when Redis does not know it."""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway.runtime.scripts import RECORD_LAYOUT


async def test_run_loads_the_script_after_a_flush(redis: aioredis.Redis) -> None:
    await redis.script_flush()
    assert await redis.script_exists(RECORD_LAYOUT.sha) == [False]
    assert await RECORD_LAYOUT.run(redis, ["layout"], ["a"]) == [1, b"a"]
    assert await RECORD_LAYOUT.run(redis, ["layout"], ["b"]) == [0, b"a"]
    assert await redis.script_exists(RECORD_LAYOUT.sha) == [True]
