"""``GET /openapi.json`` on a real ingress (127.0.0.1, real Redis): absent unless
OPENAPI_ENABLED, then the checked-in bytes to anyone; every route's other methods are 405
with ``Allow`` (RFC 9110), as the document says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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
from tests.helpers import TOKEN, free_port, running

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


@asynccontextmanager
async def ingress(redis_url: str, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    """An ingress in webhook mode with callbacks on; a client with its base URL."""
    port = free_port()
    tg = load(
        TelegramSettings,
        telegram_enabled=False,
        telegram_bot_token=TOKEN,
        telegram_mode="webhook",
        telegram_webhook_url="https://gw.example.com/webhook/telegram",
        telegram_webhook_secret="openapi_secret-0",
    )
    rs = load(RedisSettings, redis_url=redis_url)
    ps = load(PipelineSettings, delivery_secret="openapi-delivery-secret-0123")
    ing = load(IngressSettings, ingress_host="127.0.0.1", ingress_port=port, **settings)
    ready = asyncio.Event()
    async with running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready)):
        await asyncio.wait_for(ready.wait(), 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client


async def test_the_document_is_absent_by_default(redis: aioredis.Redis, redis_url: str) -> None:
    async with ingress(redis_url) as client:
        resp = await client.get("/openapi.json")
        assert resp.status_code == 404
        assert resp.json() == {"ok": False, "error": "not found"}


async def test_enabled_it_serves_the_checked_in_document_to_anyone(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async with ingress(redis_url, openapi_enabled=True) as client:
        resp = await client.get("/openapi.json")
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        assert resp.content == DOC.read_bytes()
        head = await client.head("/openapi.json")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(DOC.read_bytes()))
        post = await client.post("/openapi.json", content=b"{}")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/webhook/telegram", "POST"),
        ("PUT", "/api/delivery/x.y", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/readyz", "GET, HEAD"),
    ],
)
async def test_another_method_is_405_with_allow(
    redis: aioredis.Redis, redis_url: str, method: str, path: str, allow: str
) -> None:
    async with ingress(redis_url) as client:
        resp = await client.request(method, path)
        assert resp.status_code == 405
        assert resp.headers["allow"] == allow
        assert resp.json() == {"ok": False, "error": f"use {allow.replace(', ', ' or ')}"}


async def test_the_probes_answer_head(redis: aioredis.Redis, redis_url: str) -> None:
    async with ingress(redis_url) as client:
        for path in ("/healthz", "/readyz"):
            resp = await client.head(path)
            assert resp.status_code in (200, 503) and resp.content == b"", path
