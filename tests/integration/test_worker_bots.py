"""Many bots through one real worker (issue 15): each bot's updates go to its own
pipeline, signed with its own keys and offering callback tokens signed with its own
secret; its admins, its /help and /start texts; an unknown bot's update is a dead
letter; one bot's dead pipeline does not hold up another's updates."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.app.roles import serve_worker
from gateway.core.bots import BotsSettings
from gateway.core.contracts import GROUP_WORKERS, OutboundEntry, update_fields
from gateway.core.errors import DeliveryTokenError, TelegramFatal
from gateway.core.settings import load
from gateway.core.tokens import verify_route
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, FIXTURES, dead_letters, free_port, make_config, running, wait_for
from workers.worker.commands import HELP_TEXT

pytestmark = pytest.mark.integration

TEXT = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())


def whsec(seed: bytes) -> str:
    return "whsec_" + base64.b64encode(seed * (32 // len(seed))).decode()


KEY_D, KEY_B, KEY_C = whsec(b"default-"), whsec(b"brand-b-"), whsec(b"brand-c-")
DS_D = b"test-delivery-secret-0123"  # make_config's DELIVERY_SECRET
DS_B, DS_C = "brand-b-delivery-secret", "brand-c-delivery-secret"
BOT_B, BOT_C, UNKNOWN = 7000000002, 7000000003, 7000000009
TOKEN_B, TOKEN_C = f"{BOT_B}:BrandBtokenBrandBtoken00", f"{BOT_C}:BrandCtokenBrandCtoken00"
ADMIN_D, ADMIN_B = 111, 222
ALICE = 7777  # writes to the default bot and to bot B: one chat id, two chats


class Recorder:
    """A pipeline on 127.0.0.1 that records each request and answers its reply in the
    response (sync mode): ``<tag>: <content>``. ``stop`` and ``start`` again on the same
    port: a pipeline that goes down and comes back."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    async def _messages(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((dict(request.headers), body))
        return web.json_response({"text": f"{self.tag}: {json.loads(body)['content']}"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/messages/", self._messages)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def keys(self) -> list[str]:
        return [h["Idempotency-Key"] for h, _ in self.seen]

    def request(self, key: str) -> tuple[dict[str, str], dict[str, Any], bytes]:
        [(headers, body)] = [(h, b) for h, b in self.seen if h["Idempotency-Key"] == key]
        return headers, json.loads(body), body


@pytest.fixture
async def p1() -> AsyncIterator[Recorder]:
    rec = Recorder("p1")
    await rec.start()
    try:
        yield rec
    finally:
        await rec.stop()


@pytest.fixture
async def p2() -> AsyncIterator[Recorder]:
    rec = Recorder("p2")
    await rec.start()
    try:
        yield rec
    finally:
        await rec.stop()


def bots_file(tmp_path: Path, *tables: dict[str, Any]) -> Path:
    lines: list[str] = []
    for table in tables:
        lines.append("[[bot]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path = tmp_path / "bots.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def brand_b(pipeline_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "brand-b",
        "token": TOKEN_B,
        "webhook_secret": "brand-b-webhook-secret",
        "pipeline_url": pipeline_url,
        "pipeline_secret": KEY_B,
        "delivery_secret": DS_B,
        "admin_ids": [ADMIN_B],
        "help_text": "Brand B: just write to us.",
        **extra,
    }


def brand_c() -> dict[str, Any]:
    return {
        "name": "brand-c",
        "token": TOKEN_C,
        "webhook_secret": "brand-c-webhook-secret",
        "pipeline_secret": KEY_C,
        "delivery_secret": DS_C,
        "greeting": "Hi {name}, this is C.",
    }


def text_update(update_id: int, user: int, text: str) -> dict[str, Any]:
    update = copy.deepcopy(TEXT)
    update["update_id"] = update_id
    message = update["message"]
    message["message_id"] = update_id
    message["from"]["id"] = message["chat"]["id"] = user
    message["text"] = text
    return update


async def publish(redis: aioredis.Redis, cfg: Any, bot_id: int, update: dict[str, Any]) -> None:
    chat = update["message"]["chat"]["id"]
    fields = update_fields(
        bot_id=bot_id,
        update_id=update["update_id"],
        chat_id=chat,
        source="replay",
        raw_update=orjson.dumps(update),
    )
    await redis.xadd(cfg.keys.updates(cfg.keys.partition(bot_id, chat)), fields)  # type: ignore[arg-type]


async def sent(redis: aioredis.Redis, cfg: Any) -> list[OutboundEntry]:
    """Every sendMessage the worker queued, of every bot."""
    out: list[OutboundEntry] = []
    for stream in cfg.keys.all_outbound():
        for _, fields in await redis.xrange(stream):
            entry = OutboundEntry.from_fields(fields)
            if entry.method == "sendMessage":
                out.append(entry)
    return out


def worker_config(redis_url: str, emu: Emulator, p1: Recorder, bots: Path, **worker: Any) -> Any:
    cfg = make_config(
        redis_url,
        emu.api_url,
        pipeline={"pipeline_url": p1.url, "pipeline_signing_keys": KEY_D},
        worker={"admin_user_ids": str(ADMIN_D), **worker},
    )
    cfg.bots = load(BotsSettings, bots_file=bots)
    return cfg


async def test_each_bot_has_its_own_pipeline_keys_admins_and_texts(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    p1: Recorder,
    p2: Recorder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three bots, two pipelines: the default bot and C share PIPELINE_URL (p1), B has its
    own (p2). Every request is signed with its bot's keys only, offers a callback token
    only its bot's secret verifies, and its reply is queued as that bot's; /help, /start
    and /stats answer as each bot says; another bot's admin is just a user."""
    caplog.set_level(logging.INFO)
    cfg = worker_config(redis_url, emu, p1, bots_file(tmp_path, brand_b(p2.url), brand_c()))
    await ensure_groups(redis, cfg.keys)
    for bot_id, update in [
        (BOT_ID, text_update(1000, ALICE, "question for the default bot")),
        (BOT_B, text_update(1000, ALICE, "question for B")),  # same update id and chat
        (BOT_B, text_update(1001, ALICE, "/help")),
        (BOT_B, text_update(1002, ADMIN_B, "/stats")),
        (BOT_B, text_update(1003, ADMIN_D, "/stats")),  # the default bot's admin, not B's
        (BOT_C, text_update(1000, 503, "question for C")),
        (BOT_C, text_update(1001, 503, "/start")),
        (BOT_ID, text_update(1001, ALICE, "/help")),
        (BOT_ID, text_update(1002, ADMIN_B, "/stats")),  # B's admin, not the default bot's
        (UNKNOWN, text_update(1000, ALICE, "who am I talking to?")),
    ]:
        await publish(redis, cfg, bot_id, update)
    async with running(lambda stop: serve_worker(cfg, stop)):
        await wait_for(lambda: len(p1.seen) == 3 and len(p2.seen) == 2, message="requests")
        await wait_for(lambda: dead_letters(redis, cfg), message="the unknown bot's")
        replies = await wait_for(
            lambda: _at_least(sent(redis, cfg), 9), timeout=15, message="the replies"
        )
    assert sorted(p1.keys()) == sorted(
        [f"tg-{BOT_ID}-1000", f"tg-{BOT_ID}-1002", f"tg-{BOT_C}-1000"]
    )
    assert sorted(p2.keys()) == sorted([f"tg-{BOT_B}-1000", f"tg-{BOT_B}-1003"])
    own = {
        BOT_ID: (p1, KEY_D, DS_D),
        BOT_B: (p2, KEY_B, DS_B.encode()),
        BOT_C: (p1, KEY_C, DS_C.encode()),
    }
    for bot_id, update_id in [(BOT_ID, 1000), (BOT_B, 1000), (BOT_C, 1000)]:
        pipeline, key, secret = own[bot_id]
        headers, body, raw = pipeline.request(f"tg-{bot_id}-{update_id}")
        assert body["metadata"]["bot_id"] == bot_id
        assert Webhook(key).verify(raw, headers)["client_id"] == body["client_id"]
        token = headers["X-Webhook-URL"].rsplit("/", 1)[1]
        assert verify_route(secret, token, bot_id=bot_id).update_id == update_id
        for other, (_, other_key, other_secret) in own.items():
            if other == bot_id:
                continue
            with pytest.raises(WebhookVerificationError):
                Webhook(other_key).verify(raw, headers)
            with pytest.raises(DeliveryTokenError):
                verify_route(other_secret, token, bot_id=bot_id)
    assert p2.request(f"tg-{BOT_B}-1003")[1]["content"] == "/stats"
    assert p1.request(f"tg-{BOT_ID}-1002")[1]["content"] == "/stats"
    texts = {(e.bot_id, e.update_id): e.payload["text"] for e in replies}
    assert texts[(BOT_ID, 1000)] == "p1: question for the default bot"
    assert texts[(BOT_B, 1000)] == "p2: question for B"
    assert texts[(BOT_C, 1000)] == "p1: question for C"
    assert texts[(BOT_B, 1001)] == "Brand B: just write to us."
    assert texts[(BOT_ID, 1001)] == HELP_TEXT
    assert texts[(BOT_C, 1001)] == "Hi Alice, this is C."
    assert texts[(BOT_B, 1002)].startswith("Last hour")  # B's admin: B's /stats
    [dead] = await dead_letters(redis, cfg)
    assert dead["reason"] == "unknown_bot" and str(UNKNOWN) in dead["error"]
    # The emulator knows only the default bot's token: B's and C's getMe are refused,
    # and the worker served them all the same.
    assert "bot brand-b: getMe refused (401)" in caplog.text
    for secret in (TOKEN_B, TOKEN_C, KEY_B.removeprefix("whsec_"), DS_B):
        assert secret not in caplog.text


async def _at_least(entries: Any, n: int) -> list[OutboundEntry] | None:
    got = await entries
    return got if len(got) >= n else None


async def pending(redis: aioredis.Redis, cfg: Any) -> int:
    total = 0
    for stream in cfg.keys.all_updates():
        total += int((await redis.xpending(stream, "workers"))["pending"])
    return total


async def test_a_bot_s_dead_pipeline_does_not_hold_up_another_bot(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    p1: Recorder,
    tmp_path: Path,
) -> None:
    """Bot B's pipeline is down (its server stopped): its 20 chats (two updates each, more
    than WORKER_MAX_IN_FLIGHT 8) wait in order, and meanwhile the default bot's 200 updates
    from 200 chats are all handed to its pipeline. Once B's pipeline is back, B's chats
    finish, each in order, and nothing was dead-lettered."""
    down = Recorder("p2")  # not started: connection refused
    cfg = worker_config(
        redis_url,
        emu,
        p1,
        bots_file(tmp_path, brand_b(down.url)),
        worker_max_in_flight=8,
    )
    cfg.pipeline = cfg.pipeline.model_copy(
        update={"pipeline_retry_seconds": 300, "pipeline_breaker_cooldown": 1.0}
    )
    await ensure_groups(redis, cfg.keys)
    b_chats = range(3000, 3020)
    for n in (1, 2):
        for chat in b_chats:
            await publish(redis, cfg, BOT_B, text_update(chat * 10 + n, chat, f"B #{n}"))
    try:
        async with running(lambda stop: serve_worker(cfg, stop)):
            # B's chats hold at least WORKER_MAX_IN_FLIGHT entries, waiting.
            await wait_for(lambda: _at_least_n(pending(redis, cfg), 8), message="B waiting")
            for chat in range(5000, 5200):
                await publish(redis, cfg, BOT_ID, text_update(chat, chat, f"D {chat}"))
            await wait_for(lambda: len(p1.seen) == 200, timeout=30, message="200 handed")
            assert await pending(redis, cfg) == 40  # B's chats still wait, all of them
            assert await dead_letters(redis, cfg) == []
            await down.start()  # B's pipeline is back
            await wait_for(lambda: len(down.seen) == 40, timeout=45, message="B catches up")
            await wait_for(lambda: _equals(pending(redis, cfg), 0), message="all acknowledged")
    finally:
        await down.stop()
    assert sorted(p1.keys()) == sorted(f"tg-{BOT_ID}-{chat}" for chat in range(5000, 5200))
    order: dict[int, list[int]] = {}
    for _, body in down.seen:
        meta = json.loads(body)["metadata"]
        order.setdefault(meta["chat_id"], []).append(meta["update_id"])
    assert order == {chat: [chat * 10 + 1, chat * 10 + 2] for chat in b_chats}
    assert await dead_letters(redis, cfg) == []


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _at_least_n(value: Any, n: int) -> bool:
    return bool(await value >= n)


async def test_a_401_stops_the_worker_only_when_its_bot_is_the_only_one(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    p1: Recorder,
    p2: Recorder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every getMe answers 401: alone, TELEGRAM_BOT_TOKEN's bot stops the role as before
    issue 15; with a registry bot beside it, both bots' updates are still handed."""
    emu.faults.unauthorized(True)
    alone = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": p1.url})
    with pytest.raises(TelegramFatal, match="401"):
        await asyncio.wait_for(serve_worker(alone, asyncio.Event()), 15)
    cfg = worker_config(redis_url, emu, p1, bots_file(tmp_path, brand_b(p2.url)))
    await ensure_groups(redis, cfg.keys)
    await publish(redis, cfg, BOT_ID, text_update(2000, ALICE, "still there?"))
    await publish(redis, cfg, BOT_B, text_update(2000, ALICE, "still there, B?"))
    async with running(lambda stop: serve_worker(cfg, stop)) as stop:
        await wait_for(lambda: len(p1.seen) == 1 and len(p2.seen) == 1, message="both handed")
        for name in ("default", "brand-b"):
            refused = f"bot {name}: getMe refused (401)"
            await wait_for(lambda r=refused: r in caplog.text, message=refused)  # type: ignore[misc]
        assert not stop.is_set()


async def test_a_bot_added_just_after_another_miss_is_not_taken_for_unknown(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, p1: Recorder, tmp_path: Path
) -> None:
    """An unknown bot's update has the registry read its sources (at most once a second);
    bot C, added to BOTS_FILE a moment later, gets its first update within that second:
    the worker asks once more after the registry's next read instead of dead-lettering
    C's update (the sender does the same for replies: test_sender_bots.py)."""
    path = bots_file(tmp_path, brand_b(p1.url))
    cfg = worker_config(redis_url, emu, p1, path)
    cfg.bots = load(BotsSettings, bots_file=path, bots_refresh_seconds=60)
    await ensure_groups(redis, cfg.keys)
    stranger = text_update(1000, ALICE, "who am I talking to?")
    await publish(redis, cfg, UNKNOWN, stranger)
    stream = cfg.keys.updates(cfg.keys.partition(UNKNOWN, ALICE))

    async def stranger_read() -> bool:
        pending = int((await redis.xpending(stream, GROUP_WORKERS))["pending"])
        return pending > 0 or bool(await dead_letters(redis, cfg))

    async with running(lambda stop: serve_worker(cfg, stop)):
        await wait_for(stranger_read, message="the stranger's update read")
        bots_file(tmp_path, brand_b(p1.url), brand_c())  # C added, within the second
        await publish(redis, cfg, BOT_C, text_update(1000, 503, "question for C"))
        replies = await wait_for(lambda: sent(redis, cfg), timeout=10, message="C's reply")
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="the stranger's")
    assert [(e.bot_id, e.payload["text"]) for e in replies] == [(BOT_C, "p1: question for C")]
    assert dead["reason"] == "unknown_bot" and str(UNKNOWN) in dead["error"]
