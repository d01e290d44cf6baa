"""Long polling against the emulator: the offset moves only after Redis has the batch."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.errors import TelegramFatal
from gateway.ingress.serve import serve_ingress_role
from gateway.runtime.streams import connect
from gateway.testkit.emulator import Emulator
from tests.helpers import TOKEN, RedisProcess, make_config, running, wait_for

pytestmark = pytest.mark.integration

ALICE = 6123456789


async def stored(redis: aioredis.Redis, cfg: object) -> int:
    keys = cfg.keys  # type: ignore[attr-defined]
    return sum([int(await redis.xlen(s)) for s in keys.all_updates()])


async def test_polled_updates_are_stored_with_source(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    async with running(lambda stop: serve_ingress_role(cfg, stop)):
        for i in range(5):
            emu.user_send(user_id=ALICE + i, text=f"hi {i}")
        await wait_for(lambda: _at_least(redis, cfg, 5), message="5 stored updates")
        await wait_for(lambda: emu.state.pending_count() == 0, message="offset confirmed")
    entries = []
    for s in cfg.keys.all_updates():
        entries += [f for _, f in await redis.xrange(s)]
    assert {f[b"source"] for f in entries} == {b"polling"}


async def _at_least(redis: aioredis.Redis, cfg: object, n: int) -> bool:
    return await stored(redis, cfg) >= n


async def test_offset_waits_for_redis(
    own_redis: RedisProcess, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down: the update stays with Telegram (not confirmed) until it is stored."""
    cfg = make_config(own_redis.url, emu.api_url)
    async with running(lambda stop: serve_ingress_role(cfg, stop)):
        await wait_for(
            lambda: emu.stats()["requests"].get("getUpdates", 0) >= 1, message="first poll"
        )
        own_redis.stop(kill=True)
        emu.user_send(user_id=ALICE, text="while redis is down")
        await wait_for(
            lambda: "holding offset" in caplog.text, message="the poller holding a fetched batch"
        )
        assert emu.state.pending_count() == 1  # fetched, but not confirmed to Telegram
        own_redis.start()
        redis = connect(own_redis.url)
        try:
            await wait_for(lambda: _at_least(redis, cfg, 1), timeout=20, message="stored")
            await wait_for(
                lambda: emu.state.pending_count() == 0,
                timeout=10,
                message="offset confirmed after storing",
            )
            assert await stored(redis, cfg) == 1
        finally:
            await redis.aclose()


async def test_getupdates_5xx_is_retried(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    emu.faults.fail_next("getUpdates", 2, status=502)
    cfg = make_config(redis_url, emu.api_url)
    emu.user_send(user_id=ALICE, text="after a 502")
    async with running(lambda stop: serve_ingress_role(cfg, stop)):
        await wait_for(lambda: _at_least(redis, cfg, 1), timeout=15, message="stored")


async def test_webhook_set_makes_polling_stop_with_how_to_fix(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"{emu.api_url}/bot{TOKEN}/setWebhook", json={"url": "http://127.0.0.1:9/hook"}
        )
        assert resp.json()["ok"] is True
    cfg = make_config(redis_url, emu.api_url)
    with pytest.raises(TelegramFatal, match="webhook delete") as info:
        await asyncio.wait_for(serve_ingress_role(cfg, asyncio.Event()), 15)
    assert info.value.error_code == 409


async def test_a_permanent_getupdates_error_stops_polling_not_retried(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """A 400 to getUpdates will answer the same forever: the role stops and says so."""
    emu.faults.fail_next("getUpdates", 1, status=400, html=False)
    cfg = make_config(redis_url, emu.api_url)
    with pytest.raises(TelegramFatal, match="permanent") as info:
        await asyncio.wait_for(serve_ingress_role(cfg, asyncio.Event()), 15)
    assert info.value.error_code == 400
    assert emu.stats()["requests"]["getUpdates"] == 1


async def test_bad_token_stops_polling(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    emu.faults.unauthorized(True)
    cfg = make_config(redis_url, emu.api_url)
    with pytest.raises(TelegramFatal, match="401") as info:
        await asyncio.wait_for(serve_ingress_role(cfg, asyncio.Event()), 15)
    assert TOKEN not in str(info.value)
