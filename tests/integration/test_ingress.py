"""Ingress over real HTTP on 127.0.0.1 and real Redis: webhook, callbacks, health."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.app.cli import main as cli_main
from gateway.core.contracts import GROUP_WORKERS, Keys, OutboundEntry, partition_for
from gateway.core.errors import ConfigError
from gateway.core.settings import (
    IngressSettings,
    PipelineSettings,
    RedisSettings,
    TelegramSettings,
    load,
)
from gateway.core.tokens import sign_route
from gateway.ingress.serve import serve_ingress
from gateway.telegram.client import derive_webhook_secret, webhook_secret_for
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, FIXTURES, TOKEN, RedisProcess, free_port, running, wait_for

pytestmark = pytest.mark.integration

SECRET = "s3cr3t_token-ok"
DELIVERY = "delivery-secret-0123456789"
UPDATE = (FIXTURES / "updates" / "01_private_text_message.json").read_bytes()


async def _ingress(
    redis_url: str, partitions: int = 4, **telegram: object
) -> AsyncIterator[tuple[str, Keys]]:
    port = free_port()
    tg = load(
        TelegramSettings,
        **{
            "telegram_enabled": False,
            "telegram_bot_token": TOKEN,
            "telegram_mode": "webhook",
            "telegram_webhook_url": "https://gw.example.com/webhook/telegram",
            "telegram_webhook_secret": SECRET,
            **telegram,
        },
    )
    rs = load(RedisSettings, redis_url=redis_url, partitions=partitions)
    ps = load(PipelineSettings, delivery_secret=DELIVERY)
    ing = load(IngressSettings, ingress_host="127.0.0.1", ingress_port=port, max_body_bytes=4096)
    ready = asyncio.Event()
    async with running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready)):
        await asyncio.wait_for(ready.wait(), 10)
        yield f"http://127.0.0.1:{port}", Keys("tg", partitions)


@pytest.fixture
async def ingress(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[tuple[str, Keys]]:
    async for value in _ingress(redis_url):
        yield value


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def hook(base: str) -> str:
    return f"{base}/webhook/telegram"


HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}


async def stream_entries(redis: aioredis.Redis, keys: Keys) -> list[dict[bytes, bytes]]:
    out = []
    for stream in keys.all_updates():
        out += [fields for _, fields in await redis.xrange(stream)]
    return out


async def test_update_is_stored_untouched_before_200(
    ingress: tuple[str, Keys], client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    base, keys = ingress
    resp = await client.post(hook(base), content=UPDATE, headers=HEADERS)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"ok": True, "duplicate": False}
    chat = 6123456789
    entries = await redis.xrange(keys.updates(partition_for(chat, 4, BOT_ID)))
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"update"] == UPDATE
    assert fields[b"source"] == b"webhook"
    assert fields[b"update_id"] == b"483921734"
    assert fields[b"chat_id"] == str(chat).encode()
    assert fields[b"bot_id"] == str(BOT_ID).encode()
    assert fields[b"schema"] == b"1"


@pytest.mark.parametrize("secret", [None, "wrong", SECRET + "x", ""])
async def test_bad_or_missing_secret_is_401_and_nothing_published(
    ingress: tuple[str, Keys], client: httpx.AsyncClient, redis: aioredis.Redis, secret: str | None
) -> None:
    base, keys = ingress
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    resp = await client.post(hook(base), content=UPDATE, headers=headers)
    assert resp.status_code == 401
    assert "secret" in resp.json()["error"]
    assert await stream_entries(redis, keys) == []


async def test_duplicate_update_id_is_200_and_stored_once(
    ingress: tuple[str, Keys], client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    base, keys = ingress
    first = await client.post(hook(base), content=UPDATE, headers=HEADERS)
    again = await asyncio.gather(
        *(client.post(hook(base), content=UPDATE, headers=HEADERS) for _ in range(5))
    )
    assert first.json()["duplicate"] is False
    assert all(r.status_code == 200 and r.json()["duplicate"] is True for r in again)
    assert len(await stream_entries(redis, keys)) == 1
    dedupe = keys.dedupe(partition_for(6123456789, 4, BOT_ID), BOT_ID, 483921734)
    ttl = await redis.ttl(dedupe)
    assert 86_000 < ttl <= 86_400


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1,2]", 400, "not a JSON object"),
        (b'{"message": {"text": "hi"}}', 400, "update_id"),
        (b'{"update_id": "7", "message": {}}', 400, "update_id"),
        (b'{"update_id": -1, "message": {}}', 400, "update_id"),
        (b'{"update_id": 7}', 400, "no update payload"),
        (b"\xff\xfe\x00garbage", 400, "not valid JSON"),
        (b"[" * 2000 + b"]" * 2000, 400, "not valid JSON"),
        (b"x" * 5000, 413, "too large"),
        (b'{"update_id": 7, "message": {"chat": {"id": true}}}', 400, "chat.id is not an int"),
        (b'{"update_id": 7, "message": {"chat": {"id": "42"}}}', 400, "chat.id is not an int"),
        (
            b'{"update_id": 7, "message": {"chat": {"id": 5}, "from": {"id": false}}}',
            400,
            "message.from.id is not an integer",
        ),
        (
            b'{"update_id": 7, "callback_query": {"from": {"id": 5}, '
            b'"message": {"chat": {"id": true}}}}',
            400,
            "callback_query.message.chat.id is not an integer",
        ),
    ],
)
async def test_bad_bodies_get_4xx_with_reason(
    ingress: tuple[str, Keys],
    client: httpx.AsyncClient,
    redis: aioredis.Redis,
    body: bytes,
    status: int,
    reason: str,
) -> None:
    base, keys = ingress
    resp = await client.post(hook(base), content=body, headers=HEADERS)
    assert resp.status_code == status
    assert reason in resp.json()["error"]
    assert await stream_entries(redis, keys) == []


async def test_wrong_content_type_and_method(
    ingress: tuple[str, Keys], client: httpx.AsyncClient
) -> None:
    base, _ = ingress
    headers = {**HEADERS, "Content-Type": "text/plain"}
    assert (await client.post(hook(base), content=UPDATE, headers=headers)).status_code == 415
    assert (await client.get(hook(base))).status_code == 405
    assert (await client.get(f"{base}/nope")).status_code == 404


async def test_many_concurrent_updates_all_stored_once(
    ingress: tuple[str, Keys], redis: aioredis.Redis
) -> None:
    """Coalesced pipelines must still answer each request for its own entry."""
    base, keys = ingress
    base_update = json.loads(UPDATE)

    def body(i: int) -> bytes:
        u = json.loads(json.dumps(base_update))
        u["update_id"] = 1000 + i
        u["message"]["chat"]["id"] = 5000 + i % 37
        return orjson.dumps(u)

    # 400 requests over the client's 100 connections: on a loaded 2-core machine some
    # wait over 10 s for a connection. What is checked is the coalescing, not the wait.
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, pool=60)) as patient:
        resps = await asyncio.gather(
            *(patient.post(hook(base), content=body(i % 300), headers=HEADERS) for i in range(400))
        )
    assert all(r.status_code == 200 for r in resps)
    assert sum(1 for r in resps if not r.json()["duplicate"]) == 300
    entries = await stream_entries(redis, keys)
    assert sorted(int(f[b"update_id"]) for f in entries) == list(range(1000, 1300))
    for p, stream in enumerate(keys.all_updates()):
        for _, fields in await redis.xrange(stream):
            assert partition_for(int(fields[b"chat_id"]), 4, BOT_ID) == p


async def test_redis_down_is_503_then_recovers(
    own_redis: RedisProcess, client: httpx.AsyncClient
) -> None:
    async for base, keys in _ingress(own_redis.url):
        assert (await client.post(hook(base), content=UPDATE, headers=HEADERS)).status_code == 200
        own_redis.stop(kill=True)
        other = json.loads(UPDATE)
        other["update_id"] += 1
        resp = await client.post(hook(base), content=orjson.dumps(other), headers=HEADERS)
        assert resp.status_code == 503
        assert (await client.get(f"{base}/readyz")).status_code == 503
        assert (await client.get(f"{base}/healthz")).status_code == 200
        own_redis.start()
        url, body = hook(base), orjson.dumps(other)
        resp = await wait_for(
            lambda: _post_ok(client, url, body),  # noqa: B023 - awaited inside the loop
            timeout=15,
            message="ingress to recover",
        )
        assert resp
        # Redis restarted empty (no persistence in this test): nothing was half-written.
        r = aioredis.Redis.from_url(own_redis.url)
        total = sum([await r.xlen(s) for s in keys.all_updates()])
        await r.aclose()
        assert total == 1


async def _post_ok(client: httpx.AsyncClient, url: str, body: bytes) -> bool:
    try:
        return (await client.post(url, content=body, headers=HEADERS)).status_code == 200
    except httpx.HTTPError:
        return False


async def test_readyz_reports_groups(
    ingress: tuple[str, Keys], client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    base, keys = ingress
    await wait_for(lambda: _status(client, f"{base}/readyz", 200), message="readyz to turn 200")
    info = await redis.xinfo_groups(keys.updates(0))
    assert [g["name"] for g in info] == [GROUP_WORKERS.encode()]
    await redis.xgroup_destroy(keys.updates(1), GROUP_WORKERS)
    resp = await client.get(f"{base}/readyz")
    assert resp.status_code == 503 and resp.json()["streams"] == [keys.updates(1)]


async def _status(client: httpx.AsyncClient, url: str, status: int) -> bool:
    return (await client.get(url)).status_code == status


# --- pipeline callbacks ----------------------------------------------------------------


def delivery_url(base: str, **kw: object) -> str:
    args: dict[str, object] = {
        "bot_id": BOT_ID,
        "chat_id": 42,
        "reply_to": 7,
        "update_id": 99,
        "ttl": 60,
    }
    args.update(kw)
    return f"{base}/api/delivery/{sign_route(DELIVERY.encode(), **args)}"  # type: ignore[arg-type]


async def test_callback_publishes_outbound(
    ingress: tuple[str, Keys], client: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    base, keys = ingress
    resp = await client.post(
        delivery_url(base),
        json={"response": "Your order ships tomorrow.", "attachments": ["https://x/a.png"]},
    )
    assert resp.status_code == 200, resp.text
    entries = await redis.xrange(keys.outbound(partition_for(42, 4, BOT_ID)))
    parsed = [OutboundEntry.from_fields(f) for _, f in entries]
    assert [e.method for e in parsed] == ["sendMessage", "sendPhoto"]
    assert parsed[0].payload["text"] == "Your order ships tomorrow."
    assert parsed[0].payload["reply_parameters"]["message_id"] == 7
    assert parsed[0].chat_id == 42 and parsed[0].update_id == 99
    assert [e.reply_id for e in parsed] == resp.json()["reply_ids"]


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda url: url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"), 403),
        (lambda url: url.rsplit("/", 1)[0] + "/garbage", 403),
        (lambda url: url.rsplit("/", 1)[0] + "/", 403),
    ],
)
async def test_forged_tokens_are_403(
    ingress: tuple[str, Keys],
    client: httpx.AsyncClient,
    redis: aioredis.Redis,
    mutate: object,
    status: int,
) -> None:
    base, keys = ingress
    url = mutate(delivery_url(base))  # type: ignore[operator]
    resp = await client.post(url, json={"content": "pwned"})
    assert resp.status_code == status
    assert await redis.xlen(keys.outbound(partition_for(42, 4, BOT_ID))) == 0


async def test_expired_token_is_403(ingress: tuple[str, Keys], client: httpx.AsyncClient) -> None:
    base, _ = ingress
    url = f"{base}/api/delivery/" + sign_route(
        DELIVERY.encode(), bot_id=BOT_ID, chat_id=42, reply_to=None, update_id=1, ttl=10, now=0.0
    )
    resp = await client.post(url, json={"content": "late"})
    assert resp.status_code == 403 and "expired" in resp.json()["error"]


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{bad", 400), (b"{}", 422), (b'{"content": ""}', 422), (b"[]", 422)],
)
async def test_bad_callback_bodies(
    ingress: tuple[str, Keys], client: httpx.AsyncClient, body: bytes, status: int
) -> None:
    base, _ = ingress
    resp = await client.post(
        delivery_url(base), content=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == status
    assert resp.json()["error"]


# --- the webhook door (issue 9, item 1) -------------------------------------------------

FORGED = orjson.dumps(
    {
        "update_id": 483921735,
        "message": {
            "message_id": 1,
            "date": 1,
            "chat": {"id": 42, "type": "private"},
            "from": {"id": 42, "is_bot": False, "first_name": "Mallory"},
            "text": "/status",
        },
    }
)


async def test_polling_mode_serves_no_webhook_route(
    redis: aioredis.Redis, redis_url: str, client: httpx.AsyncClient
) -> None:
    """In polling mode nothing arrives by webhook: a forged POST (even one carrying a
    configured secret) is 404, and nothing reaches the stream."""
    async for base, keys in _ingress(redis_url, telegram_mode="polling", telegram_webhook_url=""):
        for headers in (HEADERS, {"Content-Type": "application/json"}):
            resp = await client.post(hook(base), content=FORGED, headers=headers)
            assert resp.status_code == 404, resp.text
        assert (await client.get(f"{base}/healthz")).status_code == 200
        assert await stream_entries(redis, keys) == []


async def test_webhook_mode_without_secret_checks_the_derived_one(
    redis: aioredis.Redis, redis_url: str, client: httpx.AsyncClient
) -> None:
    """No TELEGRAM_WEBHOOK_SECRET: the webhook still refuses requests without the secret
    derived from the token (one-way, Telegram's alphabet) and accepts it."""
    derived = derive_webhook_secret(TOKEN)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", derived)
    assert TOKEN.split(":")[1] not in derived
    async for base, keys in _ingress(redis_url, telegram_webhook_secret=None):
        json_only = {"Content-Type": "application/json"}
        resp = await client.post(hook(base), content=FORGED, headers=json_only)
        assert resp.status_code == 401
        wrong = {**json_only, "X-Telegram-Bot-Api-Secret-Token": derive_webhook_secret("1:x")}
        assert (await client.post(hook(base), content=FORGED, headers=wrong)).status_code == 401
        assert await stream_entries(redis, keys) == []
        right = {**json_only, "X-Telegram-Bot-Api-Secret-Token": derived}
        resp = await client.post(hook(base), content=UPDATE, headers=right)
        assert resp.status_code == 200, resp.text
        assert len(await stream_entries(redis, keys)) == 1


async def test_webhook_mode_without_secret_or_token_refuses_to_start(redis_url: str) -> None:
    tg = load(
        TelegramSettings,
        telegram_enabled=False,
        telegram_mode="webhook",
        telegram_webhook_url="https://gw.example.com/webhook/telegram",
    )
    rs = load(RedisSettings, redis_url=redis_url)
    ps = load(PipelineSettings, delivery_secret=DELIVERY)
    ing = load(IngressSettings, ingress_host="127.0.0.1", ingress_port=free_port())
    with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_SECRET") as info:
        await asyncio.wait_for(serve_ingress(tg, rs, ps, ing, 60.0, asyncio.Event()), 10)
    assert "\n" not in str(info.value)


async def test_set_webhook_registers_the_derived_secret_and_forgeries_stay_out(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, client: httpx.AsyncClient
) -> None:
    """The ingress's own setWebhook at start registers the derived secret: the emulator
    (Telegram) delivers with it, a forger without it gets 401 and nothing is stored."""
    port = free_port()
    tg = load(
        TelegramSettings,
        telegram_bot_token=TOKEN,
        telegram_api_url=emu.api_url,
        telegram_webhook_url=f"http://127.0.0.1:{port}/webhook/telegram",
    )
    assert tg.mode == "webhook" and tg.webhook_secret is None
    rs = load(RedisSettings, redis_url=redis_url)
    ps = load(PipelineSettings, delivery_secret=DELIVERY)
    ing = load(IngressSettings, ingress_host="127.0.0.1", ingress_port=port)
    keys = Keys("tg", rs.partitions)
    ready = asyncio.Event()
    async with running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready)):
        await asyncio.wait_for(ready.wait(), 10)
        assert emu.state.webhook is not None
        assert emu.state.webhook.secret_token == derive_webhook_secret(TOKEN)
        forged = await client.post(
            hook(f"http://127.0.0.1:{port}"),
            content=FORGED,
            headers={"Content-Type": "application/json"},
        )
        assert forged.status_code == 401
        emu.user_send(user_id=6123456789, text="hello by webhook")
        entries = await wait_for(lambda: stream_entries(redis, keys), message="delivered update")
    assert len(entries) == 1
    assert b"hello by webhook" in entries[0][b"update"]
    assert entries[0][b"source"] == b"webhook"


async def test_cli_webhook_set_registers_the_same_secret(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tg-gateway webhook set` and the ingress compute the secret with one function."""
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_API_URL", emu.api_url)
    monkeypatch.setenv("TELEGRAM_WEBHOOK_URL", "https://gw.example.com/webhook/telegram")
    code = await asyncio.to_thread(cli_main, ["webhook", "set"])
    assert code == 0
    assert emu.state.webhook is not None
    assert emu.state.webhook.secret_token == derive_webhook_secret(TOKEN)
    tg = load(TelegramSettings)
    assert webhook_secret_for(tg) == emu.state.webhook.secret_token
