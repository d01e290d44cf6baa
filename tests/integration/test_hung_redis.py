"""A hung Redis (SIGSTOP, not a stopped one): the webhook and the callback answer 503
within INGRESS_STORE_TIMEOUT, later requests do not queue behind the stuck pipeline, and
the updates Telegram retries are stored exactly once (issue 9, item 6)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import Keys
from gateway.core.settings import (
    IngressSettings,
    PipelineSettings,
    RedisSettings,
    TelegramSettings,
    load,
)
from gateway.core.tokens import sign_route
from gateway.ingress.serve import serve_ingress
from tests.helpers import BOT_ID, FIXTURES, TOKEN, RedisProcess, free_port, running, wait_for

pytestmark = pytest.mark.integration

SECRET = "hung_redis-secret"
DELIVERY = "hung-redis-delivery-0123"
STORE_TIMEOUT = 1.0
ANSWERED_WITHIN = STORE_TIMEOUT + 1.5  # slack for a loaded machine
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
BASE_UPDATE = orjson.loads((FIXTURES / "updates" / "01_private_text_message.json").read_bytes())


def update(update_id: int, chat: int) -> bytes:
    u = orjson.loads(orjson.dumps(BASE_UPDATE))
    u["update_id"] = update_id
    u["message"]["chat"]["id"] = chat
    return orjson.dumps(u)


async def _ingress(redis_url: str) -> AsyncIterator[tuple[str, Keys]]:
    port = free_port()
    tg = load(
        TelegramSettings,
        telegram_enabled=False,
        telegram_bot_token=TOKEN,
        telegram_mode="webhook",
        telegram_webhook_url="https://gw.example.com/webhook/telegram",
        telegram_webhook_secret=SECRET,
    )
    rs = load(RedisSettings, redis_url=redis_url)
    ps = load(PipelineSettings, delivery_secret=DELIVERY)
    ing = load(
        IngressSettings,
        ingress_host="127.0.0.1",
        ingress_port=port,
        ingress_store_timeout=STORE_TIMEOUT,
    )
    ready = asyncio.Event()
    async with running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready)):
        await asyncio.wait_for(ready.wait(), 10)
        yield f"http://127.0.0.1:{port}", Keys("tg", rs.partitions)


async def _timed(client: httpx.AsyncClient, url: str, **kw: object) -> tuple[int, float]:
    started = time.monotonic()
    resp = await client.post(url, **kw)  # type: ignore[arg-type]
    return resp.status_code, time.monotonic() - started


async def test_hung_redis_answers_503_in_time_and_retries_store_once(
    own_redis: RedisProcess,
) -> None:
    assert own_redis.proc is not None
    pid = own_redis.proc.pid
    hook_url = ""
    async with httpx.AsyncClient(timeout=30) as client:
        async for base, keys in _ingress(own_redis.url):
            hook_url = f"{base}/webhook/telegram"
            first = await client.post(hook_url, content=update(100, 1), headers=HEADERS)
            assert first.status_code == 200, first.text  # pool warm, script loaded
            delivery = f"{base}/api/delivery/" + sign_route(
                DELIVERY.encode(), bot_id=BOT_ID, chat_id=5, reply_to=None, update_id=1, ttl=60
            )
            os.kill(pid, signal.SIGSTOP)
            try:
                waves = [(101, 102, 103), (104, 105, 106)]  # the second behind the stuck first
                for wave in waves:
                    answers = await asyncio.gather(
                        *(
                            _timed(client, hook_url, content=update(i, i), headers=HEADERS)
                            for i in wave
                        ),
                        _timed(client, delivery, json={"content": "hello"}),
                    )
                    assert [status for status, _ in answers] == [503] * 4, answers
                    slowest = max(took for _, took in answers)
                    assert slowest < ANSWERED_WITHIN, answers
                started = time.monotonic()
                ready = await client.get(f"{base}/readyz")
                assert ready.status_code == 503
                assert time.monotonic() - started < ANSWERED_WITHIN
            finally:
                os.kill(pid, signal.SIGCONT)
            # Telegram retries every update it got a 503 for, until a 2xx.
            for i in (101, 102, 103, 104, 105, 106):
                body = update(i, i)
                await wait_for(
                    lambda: _ok(client, hook_url, body),  # noqa: B023 - awaited in the loop
                    timeout=20,
                    message=f"update {i} accepted after SIGCONT",
                )
            redis = aioredis.Redis.from_url(own_redis.url)
            try:
                ids: list[int] = []
                for stream in keys.all_updates():
                    ids += [int(f[b"update_id"]) for _, f in await redis.xrange(stream)]
            finally:
                await redis.aclose()
            assert sorted(ids) == [100, 101, 102, 103, 104, 105, 106]  # each exactly once


async def _ok(client: httpx.AsyncClient, url: str, body: bytes) -> bool:
    resp = await client.post(url, content=body, headers=HEADERS)
    return resp.status_code == 200
