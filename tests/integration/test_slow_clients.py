"""Slow and idle clients against a real ingress on 127.0.0.1, over raw TCP (issue 9, item 5):
headers and body each have a deadline, connections are capped, normal requests still work."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.settings import (
    IngressSettings,
    PipelineSettings,
    RedisSettings,
    TelegramSettings,
    load,
)
from gateway.ingress.serve import serve_ingress
from tests.helpers import FIXTURES, TOKEN, free_port, running

pytestmark = pytest.mark.integration

SECRET = "slow_clients-secret"
UPDATE = (FIXTURES / "updates" / "01_private_text_message.json").read_bytes()
BOUND = 1.0  # header and body timeouts used here
CLOSED_WITHIN = 4.0  # the bound plus slack for a loaded machine


async def _ingress(redis_url: str, **ingress: object) -> AsyncIterator[int]:
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
    ps = load(PipelineSettings, delivery_secret="slow-clients-delivery-0123")
    ing = load(
        IngressSettings,
        **{
            "ingress_host": "127.0.0.1",
            "ingress_port": port,
            "ingress_header_timeout": BOUND,
            "ingress_body_timeout": BOUND,
            "ingress_keep_alive": 1,
            **ingress,
        },
    )
    ready = asyncio.Event()
    async with running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready)):
        await asyncio.wait_for(ready.wait(), 10)
        yield port


@pytest.fixture
async def port(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[int]:
    async for p in _ingress(redis_url):
        yield p


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    """Everything the server sends until it closes; fails if it is still open after limit."""
    data = b""
    async with asyncio.timeout(limit):
        while chunk := await reader.read(4096):
            data += chunk
    return data


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


async def test_silent_connection_is_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        answer = await _until_closed(reader, CLOSED_WITHIN)
    finally:
        await _close(writer)
    assert time.monotonic() - started >= BOUND * 0.9
    assert answer.startswith(b"HTTP/1.1 408")


async def test_dribbled_headers_are_cut_off(port: int) -> None:
    """One header line every 0.3 s: never idle for long, yet the headers' deadline holds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    closed = asyncio.create_task(_until_closed(reader, CLOSED_WITHIN))
    try:
        writer.write(b"POST /webhook/telegram HTTP/1.1\r\nHost: x\r\n")
        for i in range(100):
            if closed.done():
                break
            with contextlib.suppress(OSError, ConnectionError):
                writer.write(b"X-Slow-%d: %d\r\n" % (i, i))
                await writer.drain()
            await asyncio.wait([closed], timeout=0.3)
        answer = await closed
    finally:
        await _close(writer)
    assert time.monotonic() - started < CLOSED_WITHIN
    assert answer.startswith(b"HTTP/1.1 408")


async def test_dribbled_body_is_cut_off(port: int, redis: aioredis.Redis) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    closed = asyncio.create_task(_until_closed(reader, CLOSED_WITHIN))
    try:
        writer.write(
            b"POST /webhook/telegram HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Telegram-Bot-Api-Secret-Token: " + SECRET.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(UPDATE)
        )
        for byte in UPDATE[:-1]:  # never the last one
            if closed.done():
                break
            with contextlib.suppress(OSError, ConnectionError):
                writer.write(bytes([byte]))
                await writer.drain()
            await asyncio.wait([closed], timeout=0.3)
        answer = await closed
    finally:
        await _close(writer)
    assert time.monotonic() - started < CLOSED_WITHIN
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request body not received in time" in answer
    assert sum([await redis.xlen(k) for k in await redis.keys("tg:updates:*")]) == 0


async def test_unread_body_after_an_early_answer_does_not_hold_the_connection(
    port: int,
) -> None:
    """A 401 is answered before the body is read; dribbling that body keeps nothing open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    closed = asyncio.create_task(_until_closed(reader, CLOSED_WITHIN))
    try:
        writer.write(
            b"POST /webhook/telegram HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        for _ in range(100):
            if closed.done():
                break
            with contextlib.suppress(OSError, ConnectionError):
                writer.write(b" ")
                await writer.drain()
            await asyncio.wait([closed], timeout=0.3)
        answer = await closed
    finally:
        await _close(writer)
    assert time.monotonic() - started < CLOSED_WITHIN + BOUND
    assert answer.startswith(b"HTTP/1.1 401")


async def test_oversized_headers_are_431(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000)
        with contextlib.suppress(OSError, ConnectionError):
            await writer.drain()
        answer = await _until_closed(reader, CLOSED_WITHIN)
    finally:
        await _close(writer)
    assert answer.startswith(b"HTTP/1.1 431")


async def test_normal_requests_still_work_and_keep_alive(port: int) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(3):  # one kept-alive connection, several requests
            resp = await client.post(
                f"http://127.0.0.1:{port}/webhook/telegram", content=UPDATE, headers=headers
            )
            assert resp.status_code == 200, resp.text
        assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200


async def test_connections_beyond_the_limit_are_refused(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async for port in _ingress(redis_url, ingress_max_connections=3, ingress_header_timeout=30):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                answer = await _until_closed(reader, CLOSED_WITHIN)
            finally:
                await _close(writer)
            assert answer.startswith(b"HTTP/1.1 503")
        finally:
            for _, w in held:
                await _close(w)
        # Room again once they are gone (the server notices the closes).
        async with httpx.AsyncClient(timeout=10) as client:
            deadline = time.monotonic() + 5
            while True:
                try:
                    resp = await client.get(f"http://127.0.0.1:{port}/healthz")
                    if resp.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "no room after the held connections closed"
                await asyncio.sleep(0.05)
