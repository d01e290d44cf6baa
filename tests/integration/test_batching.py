"""Coalesced Redis calls on real Redis: every caller gets its own replies, one refused
command stays its caller's, Redis going away answers everyone, scripts survive a flush."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gateway.runtime.batching import Coalescer
from gateway.runtime.streams import connect
from tests.helpers import RedisProcess

pytestmark = pytest.mark.integration


async def test_concurrent_callers_share_pipelines_and_get_their_own_replies(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Coalescer(redis)
    pipelines: list[int] = []
    send = calls._pipeline

    async def counting(commands: list[Any]) -> list[Any]:
        pipelines.append(len(commands))
        return await send(commands)

    monkeypatch.setattr(calls, "_pipeline", counting)

    async def caller(i: int) -> list[Any]:
        return await calls.run(("SET", f"k{i}", f"v{i}"), ("GET", f"k{i}"))

    replies = await asyncio.gather(*(caller(i) for i in range(200)))
    assert replies == [[b"OK", f"v{i}".encode()] for i in range(200)]
    assert sum(pipelines) == 400
    assert len(pipelines) <= 2  # one round trip for everyone who asked meanwhile


async def test_a_refused_command_is_its_callers_alone(redis: aioredis.Redis) -> None:
    calls = Coalescer(redis)
    await redis.set("text", "not a number")
    good, bad = await asyncio.gather(
        calls.run(("INCR", "counter")), calls.run(("INCR", "text"), ("GET", "text"))
    )
    assert good == [1]
    assert isinstance(bad[0], ResponseError) and "not an integer" in str(bad[0])
    assert bad[1] == b"not a number"


async def test_scripts_are_reloaded_after_redis_forgets_them(redis: aioredis.Redis) -> None:
    calls = Coalescer(redis)
    sha = calls.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await calls.run(("EVALSHA", sha, 1, "n", 5)) == [5]
    await redis.script_flush()
    replies = await asyncio.gather(
        calls.run(("EVALSHA", sha, 1, "n", 5), ("SET", "other", "x")),
        calls.run(("EVALSHA", sha, 1, "n", 1)),
    )
    assert replies == [[10, b"OK"], [11]]  # each ran once
    assert await redis.get("n") == b"11"


async def test_redis_gone_answers_every_caller_and_nothing_hangs(
    own_redis: RedisProcess,
) -> None:
    client = connect(own_redis.url)
    calls = Coalescer(client)
    try:
        assert await calls.run(("PING",)) == [b"PONG"]
        own_redis.stop(kill=True)
        results = await asyncio.wait_for(
            asyncio.gather(*(calls.run(("PING",)) for _ in range(20)), return_exceptions=True),
            timeout=30,
        )
        assert all(isinstance(r, RedisError | OSError) for r in results), results
        own_redis.start()
        assert await calls.run(("PING",)) == [b"PONG"]  # and it recovers
    finally:
        await client.aclose()


async def test_a_cancelled_caller_does_not_break_the_batch(redis: aioredis.Redis) -> None:
    calls = Coalescer(redis)
    task = asyncio.create_task(calls.run(("SET", "a", "1")))
    others = asyncio.gather(*(calls.run(("INCR", "b")) for _ in range(10)))
    await asyncio.sleep(0)
    task.cancel()
    assert sorted(r[0] for r in await others) == list(range(1, 11))
    await calls.aclose()
