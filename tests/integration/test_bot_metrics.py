"""The metrics' ``bot`` label on real Redis (issue 15): a process following the bot
registry (the Redis hash ``tg-gateway bots add`` writes) labels each dead letter the
consumer writes by the entry's bot, caps the labelled bots (the rest: ``other``), and
follows the registry when a bot leaves it."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.bots import BotSpec, default_bot
from gateway.core.contracts import Keys, Reason, Stage
from gateway.core.metrics import WORKER, Metrics
from gateway.runtime.bots import BotRegistry
from gateway.runtime.consumer import ConsumerConfig, Dead, Fence, Item, Outcome, StreamConsumer
from gateway.runtime.streams import ensure_groups
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

KEYS = Keys("bm", 2)
DEFAULT = default_bot("100:" + "D" * 30)
assert DEFAULT is not None


def spec(name: str, bot_id: int) -> BotSpec:
    return BotSpec(
        bot_id, f"{bot_id}:{'A' * 30}", name, f"key-{name:_<16}", "s" * 32, "redis"
    ).check()


ALPHA, BRAVO, CHARLIE = spec("alpha", 201), spec("bravo", 202), spec("charlie", 203)


async def register(redis: aioredis.Redis, *bots: BotSpec) -> None:
    for b in bots:
        await redis.hset(KEYS.bots, str(b.bot_id), orjson.dumps(b.to_record()))


def dead_by_bot(m: Metrics) -> dict[str, float]:
    text = m.exposition().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tg_gateway_dead_letters_total" and s.value:
                out[s.labels["bot"]] = out.get(s.labels["bot"], 0) + s.value
    return out


async def dead_letter_all(redis: aioredis.Redis, m: Metrics, bot_ids: list[int | None]) -> None:
    """Every entry through a real consumer whose handler dead-letters it."""

    async def handler(item: Item, fence: Fence) -> Outcome:
        return Dead(Reason.HANDLER_ERROR, "test")

    await ensure_groups(redis, KEYS)
    before = int(await redis.xlen(KEYS.dead))
    for n, bot_id in enumerate(bot_ids):
        fields = {"chat_id": str(n), **({} if bot_id is None else {"bot_id": str(bot_id)})}
        await redis.xadd(KEYS.updates(n % 2), fields)
    cfg = ConsumerConfig(
        role="worker",
        group="workers",
        stage=Stage.WORKER,
        streams=KEYS.all_updates(),
        count=8,
        block_ms=50,
        claim_idle_ms=300,
        claim_every=0.1,
        max_deliveries=3,
        max_in_flight=8,
    )
    consumer = StreamConsumer(redis, KEYS, cfg, handler, metrics=m)
    task = asyncio.create_task(consumer.run())

    async def all_dead() -> bool:
        return int(await redis.xlen(KEYS.dead)) == before + len(bot_ids)

    try:
        await wait_for(all_dead, timeout=15, message="dead letters")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)


async def test_dead_letters_are_counted_by_bot_name_with_the_registry_s_cap(
    redis: aioredis.Redis,
) -> None:
    """Limit 2: the default bot and alpha by name, bravo and charlie as ``other``; an id
    the registry does not hold is ``unknown``, an entry naming no bot ``none``. When
    alpha leaves the registry, bravo gets its own label."""
    await register(redis, ALPHA, BRAVO, CHARLIE)
    registry = BotRegistry(redis, KEYS, default=DEFAULT)
    await registry.load()
    m = Metrics(WORKER, "worker", bot_limit=2)
    m.bots.follow(registry)
    ids: list[int | None] = [DEFAULT.bot_id, ALPHA.bot_id, BRAVO.bot_id, CHARLIE.bot_id, 999, None]
    await dead_letter_all(redis, m, ids)
    assert dead_by_bot(m) == {"default": 1, "alpha": 1, "other": 2, "unknown": 1, "none": 1}

    await redis.hdel(KEYS.bots, str(ALPHA.bot_id))  # `bots remove alpha` finished
    await registry.refresh()
    await dead_letter_all(redis, m, [ALPHA.bot_id, BRAVO.bot_id, CHARLIE.bot_id])
    assert dead_by_bot(m) == {
        "default": 1,
        "alpha": 1,  # its old series stays, no longer counted
        "bravo": 1,
        "other": 3,
        "unknown": 2,
        "none": 1,
    }
