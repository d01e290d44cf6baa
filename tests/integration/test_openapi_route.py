"""``GET /openapi.json`` on a real ingress (127.0.0.1, real Redis): absent unless
OPENAPI_ENABLED, then the checked-in bytes to anyone; every route's other methods are 405
with ``Allow`` (RFC 9110), as the document says. And the answers the fuzz test cannot
provoke (Redis away, signed callbacks, callbacks off) are the document's too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.settings import (
    IngressSettings,
    PipelineSettings,
    RedisSettings,
    TelegramSettings,
    load,
)
from gateway.core.tokens import sign_route
from gateway.ingress.openapi.document import document
from gateway.ingress.serve import serve_ingress
from tests.helpers import BOT_ID, FIXTURES, TOKEN, RedisProcess, free_port, running

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
SECRET = "openapi_secret-0"
DELIVERY = "openapi-delivery-secret-0123"
KEY = "whsec_" + "a2V5LWtleS1rZXkta2V5LWtleS1rZXkta2V5LWtleQ"  # 30 bytes
UPDATE = (FIXTURES / "updates" / "01_private_text_message.json").read_bytes()


def documented(path: str, method: str, resp: httpx.Response) -> None:
    """``resp`` is an answer the document gives ``method path``: its status listed, its
    body valid against the schema of its content type."""
    doc = document()
    answer = doc["paths"][path][method.lower()]["responses"][str(resp.status_code)]
    if "$ref" in answer:
        answer = doc["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    schema = answer["content"][resp.headers["content-type"].split(";")[0]]["schema"]
    validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
    validator.validate(resp.json())


def callback_url() -> str:
    token = sign_route(
        DELIVERY.encode(), bot_id=BOT_ID, chat_id=42, reply_to=None, update_id=1, ttl=60
    )
    return f"/api/delivery/{token}"


@asynccontextmanager
async def ingress(
    redis_url: str, pipeline: dict[str, Any] | None = None, **settings: object
) -> AsyncIterator[httpx.AsyncClient]:
    """An ingress in webhook mode with callbacks on; a client with its base URL."""
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
    ps = load(PipelineSettings, **({"delivery_secret": DELIVERY} if pipeline is None else pipeline))
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


async def test_while_redis_is_away_the_503s_are_the_documented_ones(
    own_redis: RedisProcess,
) -> None:
    async with ingress(own_redis.url, ingress_store_timeout=1.0) as client:
        own_redis.stop(kill=True)
        hook = await client.post(
            "/webhook/telegram",
            content=UPDATE,
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"},
        )
        reply = await client.post(callback_url(), json={"content": "Hi"})
        ready = await client.get("/readyz")
        for resp, path, method in (
            (hook, "/webhook/{path_key}", "POST"),
            (reply, "/api/delivery/{token}", "POST"),
            (ready, "/readyz", "GET"),
        ):
            assert resp.status_code == 503, (path, resp.text)
            documented(path, method, resp)


async def test_a_callback_refused_for_its_signature_is_documented(
    redis: aioredis.Redis, redis_url: str
) -> None:
    pipeline = {"delivery_secret": DELIVERY, "callback_signing_keys": KEY}
    async with ingress(redis_url, pipeline) as client:
        resp = await client.post(callback_url(), content=orjson.dumps({"content": "Hi"}))
        assert resp.status_code == 401
        assert resp.json()["reason"] == "missing"
        documented("/api/delivery/{token}", "POST", resp)


async def test_callbacks_without_a_delivery_secret_are_a_documented_503(
    redis: aioredis.Redis, redis_url: str
) -> None:
    async with ingress(redis_url, pipeline={}) as client:
        resp = await client.post(callback_url(), json={"content": "Hi"})
        assert resp.status_code == 503
        assert "DELIVERY_SECRET" in resp.json()["error"]
        documented("/api/delivery/{token}", "POST", resp)


async def test_documented_bites(redis: aioredis.Redis, redis_url: str) -> None:
    """An answer the document does not give fails ``documented``."""
    async with ingress(redis_url) as client:
        resp = await client.get("/healthz")
        with pytest.raises(KeyError):
            documented("/readyz", "POST", resp)
        with pytest.raises(jsonschema.ValidationError):
            documented("/readyz", "GET", resp)  # {"status": "ok"} is no Readiness
