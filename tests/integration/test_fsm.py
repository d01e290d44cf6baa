"""aiogram's FSM for the user's routers lives in Redis with a TTL: it survives a worker
restart, and no per-user record accumulates in the worker process."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiogram import Dispatcher, F, Router
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import StorageKey
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.fsm.storage.redis import RedisStorage
from aiogram.types import Message
from redis.crc import key_slot

from gateway.app import roles
from gateway.app.roles import serve_sender, serve_worker
from gateway.core.contracts import Keys, partition_for, update_fields
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, FIXTURES, make_config, running
from workers.worker.context import WorkerContext
from workers.worker.fsm import fsm_storage

pytestmark = pytest.mark.integration

TEXT = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())
ALICE = TEXT["message"]["chat"]["id"]
USERS = [ALICE, *range(9_100_001, 9_100_006)]  # private chats: chat id = user id


class Form(StatesGroup):
    name = State()


def form_router() -> Router:
    router = Router(name="test-form")

    @router.message(F.text == "begin form")
    async def begin(message: Message, state: FSMContext, gw: WorkerContext) -> None:
        await state.set_state(Form.name)
        await state.update_data(step=1)
        await gw.reply("your name?")

    @router.message(Form.name)
    async def named(message: Message, state: FSMContext, gw: WorkerContext) -> None:
        data = await state.get_data()
        await state.clear()
        await gw.reply(f"hello {message.text} (step {data['step']})")

    return router


async def publish(redis: aioredis.Redis, cfg: Any, user: int, update_id: int, text: str) -> None:
    update = copy.deepcopy(TEXT)
    update["update_id"] = update_id
    update["message"]["message_id"] = update_id
    update["message"]["text"] = text
    update["message"]["chat"]["id"] = user
    update["message"]["from"]["id"] = user
    await ensure_groups(redis, cfg.keys)
    fields = update_fields(
        bot_id=BOT_ID,
        update_id=update_id,
        chat_id=user,
        source="replay",
        raw_update=orjson.dumps(update),
    )
    stream = cfg.keys.updates(partition_for(user, cfg.keys.partitions, BOT_ID))
    await redis.xadd(stream, fields)  # type: ignore[arg-type]


def state_key(keys: Keys, user: int, part: str = "state") -> str:
    return f"{keys.fsm_prefix}:{keys.chat_tag(BOT_ID, user)}:{BOT_ID}:{user}:{user}:{part}"


async def test_fsm_state_is_in_redis_with_a_ttl_and_survives_a_worker_restart(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for user in USERS:
        emu.add_chat(user, type="private")
    built: list[Dispatcher] = []
    original = roles.build_dispatcher

    def spy(*args: Any) -> Dispatcher:
        built.append(original(*args))
        return built[-1]

    monkeypatch.setattr(roles, "build_dispatcher", spy)
    cfg = make_config(redis_url, emu.api_url, worker={"fsm_ttl_seconds": 3600})
    cfg.extra_routers.append(form_router())
    for i, user in enumerate(USERS):
        await publish(redis, cfg, user, 100 + i, "begin form")
    async with running(lambda stop: serve_worker(cfg, stop), lambda stop: serve_sender(cfg, stop)):
        for user in USERS:
            [asked] = await emu.wait_messages(user, 1, timeout=20)
            assert asked["text"] == "your name?"
    # every user's conversation is in Redis, each key expiring; none in the process
    for user in USERS:
        assert await redis.get(state_key(cfg.keys, user)) == b"Form:name"
        assert 0 < await redis.ttl(state_key(cfg.keys, user)) <= 3600
        assert 0 < await redis.ttl(state_key(cfg.keys, user, "data")) <= 3600
    [first] = built
    assert isinstance(first.storage, RedisStorage)
    assert not isinstance(first.storage, MemoryStorage)

    # a new worker process (new routers, a new dispatcher) continues the conversation
    cfg = make_config(redis_url, emu.api_url, worker={"fsm_ttl_seconds": 3600})
    cfg.extra_routers.append(form_router())
    await publish(redis, cfg, ALICE, 200, "Alice")
    async with running(lambda stop: serve_worker(cfg, stop), lambda stop: serve_sender(cfg, stop)):
        replies = await emu.wait_messages(ALICE, 2, timeout=20)
    assert replies[1]["text"] == "hello Alice (step 1)"
    assert len(built) == 2 and built[1] is not first
    assert not await redis.exists(state_key(cfg.keys, ALICE))  # cleared: no leftover


async def test_fsm_storage_works_on_a_redis_cluster(cluster_redis: aioredis.Redis) -> None:
    """aiogram's RedisStorage runs single-key commands only: fine on the cluster client."""
    keys = Keys("tg", 4)
    storage = fsm_storage(cluster_redis, keys, 120)
    for user in range(1, 40):  # keys spread over every node
        key = StorageKey(bot_id=BOT_ID, chat_id=user, user_id=user)
        await storage.set_state(key, "Form:name")
        await storage.set_data(key, {"n": user})
        assert await storage.get_state(key) == "Form:name"
        assert await storage.get_data(key) == {"n": user}
        assert 0 < await cluster_redis.ttl(state_key(keys, user)) <= 120
        # on the node of the chat's partition: one node's outage stalls only its chats
        assert key_slot(state_key(keys, user).encode()) == key_slot(
            keys.updates(partition_for(user, keys.partitions, BOT_ID)).encode()
        )
        await storage.set_state(key, None)
        assert await storage.get_state(key) is None


def test_the_sandbox_alone_keeps_the_fsm_in_memory() -> None:
    from gateway.app.sandbox import sandbox_config

    cfg = sandbox_config("redis://127.0.0.1:1/0", "http://127.0.0.1:1", 1)
    assert cfg.fsm_storage == "memory"
    assert isinstance(fsm_storage(None, cfg.keys, 60, memory=True), MemoryStorage)
    assert make_config("redis://127.0.0.1:1/0", "http://127.0.0.1:1").fsm_storage == "redis"
