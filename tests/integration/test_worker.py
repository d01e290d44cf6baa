"""The worker on entries written straight to the updates stream (a replay, another
producer): malformed updates, block marks, and a user's own routers."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiogram import F, Router
from aiogram.types import Message

from gateway.app.roles import serve_sender, serve_worker
from gateway.core.contracts import partition_for, update_fields
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, FIXTURES, dead_letters, make_config, running, wait_for
from workers.worker.context import WorkerContext

pytestmark = pytest.mark.integration

TEXT = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())
KICKED = json.loads((FIXTURES / "updates" / "06_my_chat_member_bot_blocked.json").read_text())
ALICE = TEXT["message"]["chat"]["id"]
QUESTION = "How do I reset my password?"  # the reference pipeline's answer says "question"


def text_update(update_id: int, text: str) -> dict[str, Any]:
    update = copy.deepcopy(TEXT)
    update["update_id"] = update_id
    update["message"]["message_id"] = update_id
    update["message"]["text"] = text
    return update


async def publish(redis: aioredis.Redis, cfg: Any, *updates: dict[str, Any]) -> None:
    await ensure_groups(redis, cfg.keys)
    for update in updates:
        fields = update_fields(
            bot_id=BOT_ID,
            update_id=update["update_id"],
            chat_id=ALICE,
            source="replay",
            raw_update=orjson.dumps(update),
        )
        await redis.xadd(
            cfg.keys.updates(partition_for(ALICE, cfg.keys.partitions, BOT_ID)), fields
        )  # type: ignore[arg-type]


def roles(cfg: Any) -> list[Any]:
    return [lambda stop: serve_worker(cfg, stop), lambda stop: serve_sender(cfg, stop)]


@pytest.fixture
def emu(emu: Emulator) -> Emulator:
    emu.add_chat(ALICE, type="private")
    return emu


async def test_a_malformed_update_is_dead_lettered_and_the_chat_goes_on(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.app.roles")
    broken = text_update(10, "no date")
    del broken["message"]["date"]  # aiogram's Message requires it
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, broken, text_update(11, QUESTION))
    async with running(*roles(cfg)):
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
        [reply] = await emu.wait_messages(ALICE, 1, timeout=15)
    assert dead["reason"] == "invalid_entry" and dead["stage"] == "worker"
    assert "not a Telegram Update" in dead["error"]
    assert "question" in reply["text"].lower()  # the pipeline's answer to update 11
    assert "worker stopped: 1 acknowledged, 1 dead-lettered" in caplog.text


async def test_a_kicked_bot_marks_the_chat_and_the_users_next_message_clears_it(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    mark = cfg.keys.blocked_chat(BOT_ID, ALICE)
    await publish(redis, cfg, KICKED)
    async with running(*roles(cfg)):
        await wait_for(lambda: redis.exists(mark), message="chat marked blocked")
        assert await redis.ttl(mark) > 0
        await publish(redis, cfg, text_update(20, QUESTION))
        # The reply goes out: the mark is gone before the sender sees the reply.
        [reply] = await emu.wait_messages(ALICE, 1, timeout=15)
    assert "question" in reply["text"].lower()
    assert not await redis.exists(mark)
    assert await dead_letters(redis, cfg) == []


def echo_router() -> Router:
    router = Router(name="test-echo")

    @router.message(F.text.startswith("echo "))
    async def echo(message: Message, gw: WorkerContext) -> None:
        await gw.reply(message.text.removeprefix("echo "), reply_to=message.message_id)  # type: ignore[union-attr]

    return router


async def test_a_user_router_sees_plain_messages_before_the_pipeline(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """With a router of the user's, plain messages go through aiogram (no direct path)."""
    cfg = make_config(redis_url, emu.api_url)
    cfg.extra_routers.append(echo_router())
    await publish(redis, cfg, text_update(30, "echo ping"), text_update(31, QUESTION))
    async with running(*roles(cfg)):
        replies = await emu.wait_messages(ALICE, 2, timeout=15)
    assert replies[0]["text"] == "ping"
    assert "question" in replies[1]["text"].lower()  # the pipeline's answer
