"""The metrics' ``bot`` label on real Redis (issue 15): a process following the bot
registry (the Redis hash ``tg-gateway bots add`` writes) labels each dead letter the
consumer writes by the entry's bot, caps the labelled bots (the rest: ``other``), and
follows the registry when a bot leaves it; a real worker's /metrics counts each bot's
updates under its registry name."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets as random_secrets
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from gateway.app.roles import serve_worker
from gateway.core.bots import BotSpec, BotsSettings, default_bot
from gateway.core.contracts import Keys, Reason, Stage, update_fields
from gateway.core.metrics import WORKER, Metrics
from gateway.core.settings import (
    IngressSettings,
    MetricsSettings,
    PipelineSettings,
    RedisSettings,
    TelegramSettings,
    load,
)
from gateway.ingress.serve import ingress_metrics, serve_ingress
from gateway.runtime.bots import BotRegistry
from gateway.runtime.consumer import ConsumerConfig, Dead, Fence, Item, Outcome, StreamConsumer
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, FIXTURES, free_port, make_config, running, wait_for

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


METRICS_TOKEN = "bot-metrics-token-0123456789"


def by_bot(text: str, name: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out[s.labels["bot"]] = out.get(s.labels["bot"], 0) + s.value
    return out


async def test_a_real_worker_counts_each_registry_bot_under_its_name(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, tmp_path: Path
) -> None:
    """BOTS_FILE's brand-b and brand-c beside the default bot, METRICS_BOT_LABEL_LIMIT=2:
    the default bot and brand-b by name, brand-c as ``other``, an unregistered bot's
    update as an ``unknown_bot`` dead letter of bot ``unknown``."""
    file = tmp_path / "bots.toml"
    bots = (("brand-b", "7000000002:" + "B" * 24), ("brand-c", "7000000003:" + "C" * 24))
    file.write_text("".join(
        f'[[bot]]\nname = "{name}"\ntoken = "{token}"\nwebhook_secret = "{name}-secret-0123456"\n'
        for name, token in bots
    ))  # fmt: skip
    cfg = make_config(redis_url, emu.api_url)
    port = free_port()
    cfg = dataclasses.replace(
        cfg,
        metrics=load(MetricsSettings, metrics_token=METRICS_TOKEN, metrics_port=port,
                     metrics_bot_label_limit=2),
        bots=load(BotsSettings, bots_file=file),
    )  # fmt: skip
    await ensure_groups(redis, cfg.keys)
    text = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())
    for n, bot_id in enumerate((BOT_ID, 7000000002, 7000000002, 7000000003, 7000000009)):
        update = {**text, "update_id": 500 + n}
        chat = update["message"]["chat"]["id"]
        fields = update_fields(bot_id=bot_id, update_id=500 + n, chat_id=chat, source="replay",
                               raw_update=orjson.dumps(update))  # fmt: skip
        await redis.xadd(cfg.keys.updates(cfg.keys.partition(bot_id, chat)), fields)  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}/metrics"

    async def counted() -> str | None:
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                got = await client.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        except httpx.TransportError:
            return None
        done = sum(by_bot(got.text, "tg_gateway_worker_updates_total").values())
        return got.text if done == 5 else None

    async with running(lambda stop: serve_worker(cfg, stop)):
        scraped = await wait_for(counted, timeout=20, interval=0.2, message="5 updates counted")
    updates = {b: v for b, v in by_bot(scraped, "tg_gateway_worker_updates_total").items() if v}
    assert updates == {"default": 1, "brand-b": 2, "other": 1, "unknown": 1}
    dead = by_bot(scraped, "tg_gateway_dead_letters_total", reason="unknown_bot")
    assert {b: v for b, v in dead.items() if v} == {"unknown": 1}
    calls = by_bot(scraped, "tg_gateway_worker_pipeline_requests_total", status="2xx")
    assert {b: v for b, v in calls.items() if v} == {"default": 1, "brand-b": 2, "other": 1}


async def test_a_real_ingress_counts_each_bot_s_webhook_updates_under_its_name(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """The default bot's webhook and a registry bot's: accepted, duplicate and refused
    (its secret wrong) updates counted under each bot's name; a path key of no bot is
    answered as an unknown route (404) and counted as no bot's update."""
    brand = BotSpec(7000000002, "7000000002:" + "B" * 24, "brand-b",
                    random_secrets.token_urlsafe(24), random_secrets.token_urlsafe(32),
                    "redis").check()  # fmt: skip
    keys = Keys("tg", 4)
    await redis.hset(keys.bots, str(brand.bot_id), orjson.dumps(brand.to_record()))
    port = free_port()
    tg = load(TelegramSettings, telegram_enabled=False, telegram_bot_token="7689012345:" + "T" * 24,
              telegram_mode="webhook", telegram_webhook_secret="default-secret-0123456",
              telegram_webhook_url="https://gw.example.com/webhook/telegram")  # fmt: skip
    rs = load(RedisSettings, redis_url=redis_url, partitions=4)
    ms = load(MetricsSettings, metrics_token=METRICS_TOKEN)
    observe = ingress_metrics(ms, rs, None, tg)
    ing = load(IngressSettings, ingress_host="127.0.0.1", ingress_port=port)
    ready = asyncio.Event()
    base = f"http://127.0.0.1:{port}"
    update = (FIXTURES / "updates" / "01_private_text_message.json").read_bytes()
    bs = load(BotsSettings, bots_refresh_seconds=0.2)
    async with running(lambda stop: serve_ingress(tg, rs, load(PipelineSettings), ing, 60.0,
                                                  stop, ready, observe, bots=bs)):  # fmt: skip
        await asyncio.wait_for(ready.wait(), 15)
        async with httpx.AsyncClient(timeout=10) as client:
            for path, secret in (
                ("/webhook/telegram", "default-secret-0123456"),
                (f"/webhook/{brand.path_key}", brand.webhook_secret),
                (f"/webhook/{brand.path_key}", brand.webhook_secret),  # a duplicate
                (f"/webhook/{brand.path_key}", "wrong-secret-0123456789"),
            ):
                headers = {"Content-Type": "application/json",
                           "X-Telegram-Bot-Api-Secret-Token": secret or ""}  # fmt: skip
                await client.post(base + path, content=update, headers=headers)
            nobody = await client.post(base + "/webhook/" + "x" * 32, content=update)
            assert nobody.status_code == 404
            text = (await client.get(base + "/metrics",
                    headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).text  # fmt: skip
    name = "tg_gateway_ingress_updates_total"
    for outcome, want in (
        ("accepted", {"default": 1, "brand-b": 1}),
        ("duplicate", {"brand-b": 1}),
        ("rejected", {"brand-b": 1}),
    ):
        got = by_bot(text, name, source="webhook", outcome=outcome)
        assert {b: v for b, v in got.items() if v} == want, outcome
