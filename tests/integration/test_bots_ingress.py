"""Many bots through one ingress (issue 15), over real HTTP on 127.0.0.1 and real Redis:
each bot's webhook on its opaque path key with its own secret, callbacks checked with their
bot's key and refused for a bot not served, file links fetched with their bot's token."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.bots import BotSpec, BotsSettings, bot_id_of
from gateway.core.contracts import Keys, OutboundEntry
from gateway.core.files import FileRef, FilesSettings, sign_file
from gateway.core.settings import IngressSettings, PipelineSettings, RedisSettings, TelegramSettings
from gateway.core.settings import load as load_settings
from gateway.core.tokens import sign_route
from gateway.ingress.serve import serve_ingress
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, FIXTURES, TOKEN, free_port, running, wait_for

pytestmark = pytest.mark.integration

TOKEN_B = "7689012346:BOTBbotbBOTBbotbBOTBbotbBOTBbotb00"
TOKEN_C = "7689012347:BOTCbotcBOTCbotcBOTCbotcBOTCbotc00"
TOKEN_D = "7689012348:BOTDbotdBOTDbotdBOTDbotdBOTDbotd00"  # no bot of this deployment
DEFAULT_SECRET = "default_secret-0123456789"
DELIVERY = "delivery-secret-0123456789"
FILES = "files-secret-0123456789"
B_DELIVERY = "brand-b-delivery-secret-0123"
UPDATE = (FIXTURES / "updates" / "01_private_text_message.json").read_bytes()
CHAT = 6123456789
PARTITIONS = 4
KEYS = Keys("tg", PARTITIONS)
NOT_FOUND = {"ok": False, "error": "not found"}


def spec(name: str, token: str, **kw: Any) -> BotSpec:
    """A registry bot as `tg-gateway bots add` makes one: a random path key and secret."""
    return BotSpec(
        bot_id=bot_id_of(token),
        token=token,
        name=name,
        path_key=secrets.token_urlsafe(24),
        webhook_secret=secrets.token_urlsafe(32),
        source="redis",
        **kw,
    ).check()


async def put(redis: aioredis.Redis, bot: BotSpec) -> None:
    await redis.hset(KEYS.bots, str(bot.bot_id), orjson.dumps(bot.to_record()))


def hook(base: str, bot: BotSpec) -> str:
    return f"{base}/webhook/{bot.path_key}"


def headers(secret: str | None) -> dict[str, str]:
    out = {"Content-Type": "application/json"}
    if secret is not None:
        out["X-Telegram-Bot-Api-Secret-Token"] = secret
    return out


async def stored(redis: aioredis.Redis) -> list[dict[bytes, bytes]]:
    out = []
    for stream in KEYS.all_updates():
        out += [fields for _, fields in await redis.xrange(stream)]
    return out


async def outbound(redis: aioredis.Redis) -> list[OutboundEntry]:
    out = []
    for stream in KEYS.all_outbound():
        out += [OutboundEntry.from_fields(f) for _, f in await redis.xrange(stream)]
    return out


Ingress = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def ingress(redis: aioredis.Redis, redis_url: str) -> Ingress:
    """``async with ingress(**telegram) as base``: an ingress in webhook mode with Telegram
    disabled (nothing registered), the registry re-read every 0.2 s."""

    @asynccontextmanager
    async def start(**telegram: Any) -> AsyncIterator[str]:
        port = free_port()
        tg = load_settings(
            TelegramSettings,
            **{
                "telegram_enabled": False,
                "telegram_bot_token": TOKEN,
                "telegram_mode": "webhook",
                "telegram_webhook_url": "https://gw.example.com/webhook/telegram",
                "telegram_webhook_secret": DEFAULT_SECRET,
                **telegram,
            },
        )
        rs = load_settings(RedisSettings, redis_url=redis_url, partitions=PARTITIONS)
        ps = load_settings(PipelineSettings, delivery_secret=DELIVERY)
        ing = load_settings(
            IngressSettings, ingress_host="127.0.0.1", ingress_port=port, max_body_bytes=4096
        )
        bs = load_settings(BotsSettings, bots_refresh_seconds=0.2)
        ready = asyncio.Event()
        async with running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready, bots=bs)):
            await asyncio.wait_for(ready.wait(), 15)
            yield f"http://127.0.0.1:{port}"

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


# --- webhooks ---------------------------------------------------------------------------


async def test_each_bot_is_accepted_only_with_its_own_secret_and_stored_as_itself(
    ingress: Ingress, redis: aioredis.Redis, http: httpx.AsyncClient
) -> None:
    """Three bots (the default one and two of the registry): each path takes its own
    secret alone (another bot's: 401, nothing stored); the same update of the same chat
    sent to each is stored once per bot, with that bot's id."""
    b, c = spec("brand-b", TOKEN_B), spec("brand-c", TOKEN_C)
    await put(redis, b)
    await put(redis, c)
    async with ingress() as base:
        default = f"{base}/webhook/telegram"
        paths = {
            default: DEFAULT_SECRET,
            hook(base, b): b.webhook_secret,
            hook(base, c): c.webhook_secret,
        }
        for url, own in paths.items():
            for other in paths.values():
                if other != own:
                    resp = await http.post(url, content=UPDATE, headers=headers(other))
                    assert resp.status_code == 401, (url, resp.text)
        assert await stored(redis) == []
        for url, own in paths.items():
            resp = await http.post(url, content=UPDATE, headers=headers(own))
            assert resp.status_code == 200 and resp.json() == {"ok": True, "duplicate": False}
        again = await http.post(hook(base, b), content=UPDATE, headers=headers(b.webhook_secret))
        assert again.json()["duplicate"] is True  # dedupe is per bot: one per bot
    entries = await stored(redis)
    assert sorted(int(f[b"bot_id"]) for f in entries) == sorted([BOT_ID, b.bot_id, c.bot_id])
    assert all(f[b"update"] == UPDATE and int(f[b"chat_id"]) == CHAT for f in entries)
    for bot_id in (BOT_ID, b.bot_id, c.bot_id):  # each in its (bot, chat) partition
        here = await redis.xrange(KEYS.updates(KEYS.partition(bot_id, CHAT)))
        assert bot_id in [int(f[b"bot_id"]) for _, f in here]


@pytest.mark.parametrize(
    "key",
    [
        "unknownKEYunknownKEYunknownKEY00",  # the shape of a key, no bot's
        "short",
        "../../etc/passwd",
        "a" * 65,
        "k" * 5000,
        "key%20with%20spaces%20inside%20it",
        "%00%00%00%00%00%00%00%00%00%00%00%00",
        "ключключключключключключ",
        "",
        "telegram/x",
    ],
)
async def test_an_unknown_or_odd_path_key_answers_as_an_unknown_route(
    ingress: Ingress, redis: aioredis.Redis, http: httpx.AsyncClient, key: str
) -> None:
    """No oracle: a key no active bot has, of any shape, gets the 404 of a route that does
    not exist, even with a real bot's secret; nothing is stored."""
    b = spec("brand-b", TOKEN_B)
    await put(redis, b)
    async with ingress() as base:
        unknown = await http.post(f"{base}/no/such/route", content=UPDATE, headers=headers(None))
        resp = await http.post(
            f"{base}/webhook/{key}", content=UPDATE, headers=headers(b.webhook_secret)
        )
        assert (resp.status_code, resp.json()) == (unknown.status_code, unknown.json())
        assert resp.json() == NOT_FOUND
    assert await stored(redis) == []


async def test_a_removing_bot_and_a_polled_bot_have_no_route(
    ingress: Ingress, redis: aioredis.Redis, http: httpx.AsyncClient
) -> None:
    """`bots remove` began (removing_since): its path is unknown at once. With
    TELEGRAM_MODE=polling the registry's bots are polled: no path answers."""
    removing = spec("leaving", TOKEN_C, removing_since=time.time())
    b = spec("brand-b", TOKEN_B)
    await put(redis, removing)
    await put(redis, b)
    async with ingress() as base:
        resp = await http.post(
            hook(base, removing), content=UPDATE, headers=headers(removing.webhook_secret)
        )
        assert (resp.status_code, resp.json()) == (404, NOT_FOUND)
    async with ingress(telegram_mode="polling") as base:
        resp = await http.post(hook(base, b), content=UPDATE, headers=headers(b.webhook_secret))
        assert (resp.status_code, resp.json()) == (404, NOT_FOUND)
    assert await stored(redis) == []


async def test_a_bot_added_while_running_is_served_at_once_and_a_removed_one_is_not(
    ingress: Ingress, redis: aioredis.Redis, http: httpx.AsyncClient
) -> None:
    """Added by another process a moment ago: its first update is taken (a miss re-reads
    the registry), not refused until the next refresh. Deleted: its path is unknown."""
    b = spec("brand-b", TOKEN_B)
    async with ingress() as base:
        await put(redis, b)
        resp = await http.post(hook(base, b), content=UPDATE, headers=headers(b.webhook_secret))
        assert resp.status_code == 200, resp.text
        await redis.hdel(KEYS.bots, str(b.bot_id))

        async def refused() -> bool:
            r = await http.post(hook(base, b), content=UPDATE, headers=headers(b.webhook_secret))
            return r.status_code == 404

        await wait_for(refused, timeout=5, message="the removed bot's path refused")
    assert [int(f[b"bot_id"]) for f in await stored(redis)] == [b.bot_id]


@pytest.mark.parametrize(
    ("body", "secret", "ctype", "status", "error"),
    [
        (b"x" * 5000, "own", "application/json", 413, "too large"),
        (b"{not json", "own", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "own", "application/json", 400, "not a JSON object"),
        (b'{"update_id": 7}', "own", "application/json", 400, "no update payload"),
        (b"\xff\xfe\x00garbage", "own", "application/json", 400, "not valid JSON"),
        (UPDATE, None, "application/json", 401, "secret"),
        (UPDATE, "", "application/json", 401, "secret"),
        (UPDATE, "own-but-longer", "application/json", 401, "secret"),
        (UPDATE, "own", "text/plain", 415, "Content-Type"),
    ],
)
async def test_hostile_requests_on_a_bot_route_get_a_4xx_with_a_reason(
    ingress: Ingress,
    redis: aioredis.Redis,
    http: httpx.AsyncClient,
    body: bytes,
    secret: str | None,
    ctype: str,
    status: int,
    error: str,
) -> None:
    b = spec("brand-b", TOKEN_B)
    await put(redis, b)
    given = {"own": b.webhook_secret, "own-but-longer": f"{b.webhook_secret}x"}.get(
        secret or "", secret
    )
    async with ingress() as base:
        hdrs = {**headers(given), "Content-Type": ctype}
        resp = await http.post(hook(base, b), content=body, headers=hdrs)
        assert resp.status_code == status, resp.text
        assert error in resp.json()["error"]
        assert (await http.get(hook(base, b))).status_code == 405  # a bot's route, not GET
    assert await stored(redis) == []


# --- callbacks ----------------------------------------------------------------------------


def callback(base: str, secret: str, bot_id: int, chat_id: int = 42) -> str:
    token = sign_route(
        secret.encode(), bot_id=bot_id, chat_id=chat_id, reply_to=None, update_id=99, ttl=60
    )
    return f"{base}/api/delivery/{token}"


async def test_a_callback_is_checked_with_its_bots_key_and_refused_for_a_bot_not_served(
    ingress: Ingress, redis: aioredis.Redis, http: httpx.AsyncClient
) -> None:
    """B has its own delivery_secret: only it signs B's tokens (DELIVERY_SECRET's are
    forged for B). C has none: DELIVERY_SECRET. A bot the deployment does not serve, or no
    longer does (its record deleted), is 403 with the reason; one being removed still
    gets its replies (it drains)."""
    b = spec("brand-b", TOKEN_B, delivery_secret=B_DELIVERY)
    c = spec("brand-c", TOKEN_C)
    await put(redis, b)
    await put(redis, c)
    reply = {"content": "hello"}
    async with ingress() as base:
        ok = [
            callback(base, DELIVERY, BOT_ID),
            callback(base, B_DELIVERY, b.bot_id),
            callback(base, DELIVERY, c.bot_id),
        ]
        for url in ok:
            resp = await http.post(url, json=reply)
            assert resp.status_code == 200, resp.text
        forged = await http.post(callback(base, DELIVERY, b.bot_id), json=reply)
        assert forged.status_code == 403 and "bad signature" in forged.json()["error"]
        wrong_key = await http.post(callback(base, B_DELIVERY, c.bot_id), json=reply)
        assert wrong_key.status_code == 403 and "bad signature" in wrong_key.json()["error"]
        unknown = await http.post(callback(base, DELIVERY, bot_id_of(TOKEN_D)), json=reply)
        assert unknown.status_code == 403 and "bot not served" in unknown.json()["error"]
        leaving = spec("brand-c", TOKEN_C, removing_since=time.time())
        await put(redis, leaving)

        async def seen() -> bool:  # the ingress read it: its webhook path is gone
            r = await http.post(hook(base, leaving), content=UPDATE, headers=headers(None))
            return r.status_code == 404

        await wait_for(seen, timeout=5, message="the removal seen by the ingress")
        draining = await http.post(callback(base, DELIVERY, c.bot_id, chat_id=43), json=reply)
        assert draining.status_code == 200, draining.text
        await redis.hdel(KEYS.bots, str(c.bot_id))

        async def gone() -> bool:
            r = await http.post(callback(base, DELIVERY, c.bot_id, chat_id=44), json=reply)
            return r.status_code == 403 and "bot not served" in r.json()["error"]

        await wait_for(gone, timeout=5, message="the removed bot's callbacks refused")
        late = await http.post(callback(base, DELIVERY, c.bot_id, chat_id=45), json=reply)
        assert late.status_code == 403
    entries = await outbound(redis)  # chat 44: accepted until the deletion was read
    assert sorted((e.bot_id, e.chat_id) for e in entries if e.chat_id != 44) == sorted(
        [(BOT_ID, 42), (b.bot_id, 42), (c.bot_id, 42), (c.bot_id, 43)]
    )


@pytest.mark.parametrize(
    "token",
    [
        "e30.AAAA",  # {} : no bot
        "eyJiIjoiNzY4OTAxMjM0NiJ9.AAAA",  # {"b": "7689012346"}: not a number
        "eyJiIjp0cnVlfQ.AAAA",  # {"b": true}
        "eyJiIjotMX0.AAAA",  # {"b": -1}
        "bm90IGpzb24.AAAA",  # not JSON
        "x" * 600,
    ],
)
async def test_a_callback_token_naming_no_bot_is_refused_as_malformed(
    ingress: Ingress, redis: aioredis.Redis, http: httpx.AsyncClient, token: str
) -> None:
    async with ingress() as base:
        resp = await http.post(f"{base}/api/delivery/{token}", json={"content": "x"})
        assert resp.status_code == 403 and "malformed" in resp.json()["error"]
    assert await outbound(redis) == []


# --- file links ---------------------------------------------------------------------------


def file_link(base: str, bot_id: int, file_id: str, unique: str) -> str:
    ref = FileRef(
        bot_id=bot_id,
        file_id=file_id,
        file_unique_id=unique,
        kind="document",
        expires_at=int(time.time()) + 600,
    )
    return f"{base}/api/files/{sign_file(FILES.encode(), ref)}"


async def test_a_file_link_is_fetched_with_its_bots_token_and_never_as_another_bot(
    redis: aioredis.Redis, redis_url: str, http: httpx.AsyncClient
) -> None:
    """Two bots on one emulator: bot B's link serves B's file (getFile asked with B's
    token); the same file named in a link of bot C is not C's file (404 from Telegram:
    file ids are per bot); a link of a bot not served is 403."""
    emu = Emulator(token=TOKEN)
    b_core = emu.add_bot(TOKEN_B, username="brand_b_bot")
    c_core = emu.add_bot(TOKEN_C, username="brand_c_bot")
    await emu.start("127.0.0.1", 0)
    try:
        b, c = spec("brand-b", TOKEN_B), spec("brand-c", TOKEN_C)
        await put(redis, b)
        await put(redis, c)
        update = b_core.user_send_file(CHAT, "document", content=b"B's bytes " * 100)
        doc = update["message"]["document"]
        port = free_port()
        tg = load_settings(
            TelegramSettings,
            telegram_bot_token=TOKEN,
            telegram_api_url=emu.api_url,
            telegram_mode="polling",
            telegram_poll_timeout=1,
        )
        rs = load_settings(RedisSettings, redis_url=redis_url, partitions=PARTITIONS)
        ps = load_settings(PipelineSettings, delivery_secret=DELIVERY)
        ing = load_settings(IngressSettings, ingress_host="127.0.0.1", ingress_port=port)
        fs = load_settings(FilesSettings, files_secret=FILES)
        bs = load_settings(BotsSettings, bots_refresh_seconds=0.2)
        ready = asyncio.Event()
        async with running(
            lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready, files=fs, bots=bs)
        ):
            await asyncio.wait_for(ready.wait(), 15)
            base = f"http://127.0.0.1:{port}"
            asked = c_core.stats()["requests"].get("getFile", 0)
            got = await http.get(file_link(base, b.bot_id, doc["file_id"], doc["file_unique_id"]))
            assert got.status_code == 200 and got.content == b"B's bytes " * 100
            as_c = await http.get(file_link(base, c.bot_id, doc["file_id"], doc["file_unique_id"]))
            assert as_c.status_code == 404 and as_c.json()["reason"] == "file_not_found"
            assert c_core.stats()["requests"].get("getFile", 0) == asked + 1  # C's own token
            unserved = file_link(base, bot_id_of(TOKEN_D), doc["file_id"], doc["file_unique_id"])
            resp = await http.get(unserved)
            assert resp.status_code == 403 and resp.json()["reason"] == "bot_not_served"
            for text in (got.headers.get("content-disposition", ""), as_c.text, resp.text):
                assert TOKEN_B not in text and TOKEN_C not in text
    finally:
        await emu.stop()
