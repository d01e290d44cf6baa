"""The sender's bots (workers/sender/bots.py): each bot's limits, its client per token
closed once idle, and which bot's 401 stops the role."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import redis.asyncio as aioredis
from aiogram import Bot

from gateway.core.bots import BotSpec, BotTable, default_bot
from gateway.core.contracts import Keys
from gateway.runtime.bots import BotRegistry
from workers.sender.bots import SenderBots, bot_limits
from workers.sender.limits import Limits

KEYS = Keys("tg", 4)
DEFAULT = "7689012345:SANDBOXsandboxSANDBOXsandbox00"
A = BotSpec(
    bot_id=7100000001,
    token="7100000001:AAAAaaaaAAAAaaaaAAAAaaaa01",
    name="brand-a",
    path_key="path-key-of-brand-a",
    webhook_secret="webhook-secret-brand-a",
    source="redis",
)
BASE = Limits(global_per_second=30.0)


def test_a_bot_has_its_own_limit_and_pays_for_broadcasts_only_above_30() -> None:
    assert bot_limits(A, BASE, False) == (BASE, False)
    assert bot_limits(A, BASE, True) == (BASE, True)  # SENDER_PAID_BROADCAST, no own limit
    own = dataclasses.replace(A, global_per_second=20.0)
    assert bot_limits(own, BASE, True) == (Limits(global_per_second=20.0), False)
    paid = dataclasses.replace(A, global_per_second=500.0)
    assert bot_limits(paid, BASE, False) == (Limits(global_per_second=500.0), True)


class Call:
    """A Bot API call held in flight until ``done`` is set."""

    timeout = 30.0

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def call(self, method: str, params: dict[str, Any], timeout: Any = None) -> Any:
        await self.done.wait()
        return {"message_id": 1}


def sender_bots(*bots: BotSpec) -> tuple[SenderBots, BotRegistry, list[Bot]]:
    registry = BotRegistry.fixed(KEYS, list(bots))
    made: list[Bot] = []

    def new_bot(token: str) -> Bot:
        made.append(Bot(token))
        return made[-1]

    return SenderBots(registry, aioredis.Redis(), KEYS, new_bot, BASE), registry, made


def swap(registry: BotRegistry, *bots: BotSpec) -> None:
    """What a refresh does when the registry's sources changed."""
    old, registry.table = registry.table, BotTable.of(bots, registry.table.version + 1)
    assert registry.on_change is not None
    registry.on_change(old, registry.table)


async def test_a_new_token_gets_a_new_client_and_the_old_closes_once_idle() -> None:
    bots, registry, made = sender_bots(A)
    bot = await bots.lookup(A.bot_id)
    assert bot is not None and await bots.lookup(A.bot_id) is bot
    old = bot.client
    held = Call()
    old.api = held  # type: ignore[assignment]
    in_flight = asyncio.create_task(bot.call(old, "sendMessage", {}, None))
    await asyncio.sleep(0)
    rotated = dataclasses.replace(A, token="7100000001:ZZZZzzzzZZZZzzzzZZZZzzzz99")
    swap(registry, rotated)
    assert bot.client is not old and bot.client.token == rotated.token
    assert old.retired and not old.closed  # its request is still in flight
    held.done.set()
    assert await in_flight == {"message_id": 1}
    await asyncio.sleep(0)  # the close task runs
    assert old.closed
    await bots.aclose()
    assert [b.token for b in made] == [A.token, rotated.token]


async def test_a_bot_that_leaves_the_registry_is_dropped_with_its_client() -> None:
    bots, registry, _ = sender_bots(A)
    bot = await bots.lookup(A.bot_id)
    assert bot is not None
    client = bot.client
    swap(registry)
    await asyncio.sleep(0)
    assert client.closed and list(bots) == []
    assert await bots.lookup(A.bot_id) is None


async def test_a_changed_limit_reaches_the_bots_limiter() -> None:
    bots, registry, _ = sender_bots(A)
    bot = await bots.lookup(A.bot_id)
    assert bot is not None and bot.limiter.limits.global_per_second == 30.0
    swap(registry, dataclasses.replace(A, global_per_second=500.0))
    assert bot.limiter.limits.global_per_second == 500.0 and bot.paid_broadcast
    await bots.aclose()


async def test_a_401_stops_the_role_only_for_the_default_bot_alone() -> None:
    default = default_bot(DEFAULT)
    assert default is not None
    alone, _, _ = sender_bots(default)
    with_others, _, _ = sender_bots(default, A)
    for bots, bot_id, stops in (
        (alone, default.bot_id, True),
        (with_others, default.bot_id, False),
        (with_others, A.bot_id, False),
    ):
        bot = await bots.lookup(bot_id)
        assert bot is not None and bots.stops_role(bot) is stops, (bot.name, stops)
