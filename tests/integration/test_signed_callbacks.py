"""Callbacks signed per Standard Webhooks, through a real ingress on 127.0.0.1: signed
with the reference library's own ``sign`` they are accepted; forged, stale, missing or
malformed signatures get 401 with the reason; the signed URL token is still required;
without CALLBACK_SIGNING_KEYS nothing changes."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from standardwebhooks.webhooks import Webhook

from gateway.core.contracts import Keys, decode_fields
from gateway.core.settings import IngressSettings, PipelineSettings, RedisSettings, TelegramSettings
from gateway.core.settings import load as load_settings
from gateway.core.signing import SigningKeys
from gateway.core.tokens import sign_route
from gateway.ingress.serve import serve_ingress
from gateway.testkit.reference.app import ReferencePipelineServer
from tests.helpers import BOT_ID, TOKEN, free_port, running

pytestmark = pytest.mark.integration

DELIVERY = "delivery-secret-0123456789"
OLD = "whsec_" + base64.b64encode(b"callback-old-key" * 2).decode()
NEW = "whsec_" + base64.b64encode(b"callback-new-key" * 2).decode()
FORGER = "whsec_" + base64.b64encode(b"not-the-gateway!" * 2).decode()
BODY = b'{"content": "Your ticket is #42"}'

Ingress = Callable[[str], AbstractAsyncContextManager[str]]


@pytest.fixture
def ingress(redis: aioredis.Redis, redis_url: str) -> Ingress:
    """``async with ingress(keys) as url``: a real ingress with CALLBACK_SIGNING_KEYS."""

    @asynccontextmanager
    async def start(callback_keys: str) -> AsyncIterator[str]:
        port = free_port()
        tg = load_settings(TelegramSettings, telegram_enabled=False, telegram_bot_token=TOKEN)
        rs = load_settings(RedisSettings, redis_url=redis_url, partitions=2)
        ps = load_settings(
            PipelineSettings, delivery_secret=DELIVERY, callback_signing_keys=callback_keys
        )
        ing = load_settings(IngressSettings, ingress_host="127.0.0.1", ingress_port=port)
        ready = asyncio.Event()
        async with running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready)):
            await asyncio.wait_for(ready.wait(), 10)
            yield f"http://127.0.0.1:{port}/api/delivery/{token()}"

    return start


def token() -> str:
    return sign_route(
        DELIVERY.encode(), bot_id=BOT_ID, chat_id=42, reply_to=7, update_id=99, ttl=60
    )


def signed(
    key: str, body: bytes = BODY, at: datetime | None = None, msg_id: str = "msg_1"
) -> dict[str, str]:
    """Headers signed by the reference library, not by the gateway's code."""
    at = at or datetime.now(tz=UTC)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(key).sign(msg_id, at, body.decode()),
    }


async def outbound(redis: aioredis.Redis) -> list[dict[str, str]]:
    keys = Keys("tg", 2)
    return [decode_fields(f) for s in keys.all_outbound() for _, f in await redis.xrange(s)]


async def test_a_callback_signed_with_any_configured_key_is_accepted(
    redis: aioredis.Redis, ingress: Ingress
) -> None:
    """Two keys configured (a rotation): a callback signed with either is sent."""
    async with ingress(f"{OLD},{NEW}") as url, httpx.AsyncClient() as http:
        for n, key in enumerate((OLD, NEW)):
            body = b'{"content": "reply %d"}' % n
            resp = await http.post(url, content=body, headers=signed(key, body, msg_id=f"m{n}"))
            assert resp.status_code == 200, resp.text
    texts = sorted(orjson.loads(e["payload"])["text"] for e in await outbound(redis))
    assert texts == ["reply 0", "reply 1"]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (lambda: signed(FORGER), "bad_signature"),
        (lambda: signed(OLD, b'{"content": "something else"}'), "bad_signature"),
        (lambda: signed(OLD, at=datetime.now(tz=UTC) - timedelta(minutes=6)), "stale"),
        (lambda: signed(OLD, at=datetime.now(tz=UTC) + timedelta(minutes=6)), "stale"),
        (lambda: {"content-type": "application/json"}, "missing"),
        (lambda: {**signed(OLD), "webhook-signature": ""}, "missing"),
        (lambda: {**signed(OLD), "webhook-timestamp": "soon"}, "malformed"),
        (lambda: {**signed(OLD), "webhook-signature": " ".join(["v1,AAAA"] * 40)}, "malformed"),
        (lambda: {**signed(OLD), "webhook-signature": "v1," + "A" * 30_000}, "bad_signature"),
    ],
)
async def test_forged_stale_missing_or_malformed_signatures_get_401_with_the_reason(
    redis: aioredis.Redis,
    ingress: Ingress,
    headers: Callable[[], dict[str, str]],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with ingress(OLD) as url, httpx.AsyncClient() as http:
        resp = await http.post(url, content=BODY, headers=headers())
    assert resp.status_code == 401
    assert resp.json()["reason"] == reason
    assert resp.json()["error"].startswith("signature refused: ")
    assert await outbound(redis) == []
    assert OLD.removeprefix("whsec_") not in caplog.text


async def test_the_url_token_is_still_required_with_a_good_signature(ingress: Ingress) -> None:
    async with ingress(OLD) as url, httpx.AsyncClient() as http:
        forged_token = url.rsplit("/", 1)[0] + "/AAAA" + token()[4:]
        resp = await http.post(forged_token, content=BODY, headers=signed(OLD))
    assert resp.status_code == 403


async def test_without_callback_keys_an_unsigned_callback_is_accepted_as_before(
    redis: aioredis.Redis, ingress: Ingress
) -> None:
    async with ingress("") as url, httpx.AsyncClient() as http:
        resp = await http.post(url, content=BODY, headers={"content-type": "application/json"})
        other = b'{"content": "and another"}'
        forged = await http.post(url, content=other, headers=signed(FORGER, other))
    assert resp.status_code == 200 and forged.status_code == 200  # not checked at all
    assert len(await outbound(redis)) == 2


async def test_the_reference_pipeline_signs_its_callbacks_when_given_keys(
    redis: aioredis.Redis, ingress: Ingress
) -> None:
    """``tg-gateway pipeline`` with CALLBACK_SIGNING_KEYS: its async replies pass an
    ingress that checks them (compose with signing on keeps working)."""
    server = ReferencePipelineServer(callback_signing_keys=SigningKeys.parse([NEW]))
    base = await server.start()
    try:
        async with ingress(f"{OLD},{NEW}") as url, httpx.AsyncClient() as http:
            body = {"client_id": "telegram_42", "content": "hello", "metadata": {}}
            headers = {"X-Webhook-URL": url, "Idempotency-Key": "tg-1-99"}
            resp = await http.post(f"{base}/api/messages/", json=body, headers=headers)
            assert resp.status_code == 202
            await server.drain()
            assert len(await outbound(redis)) == 1
    finally:
        await server.stop()
