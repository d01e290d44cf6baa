"""The bot registry on a real Redis: sources merged, refreshed, kept through failures."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.bots import BotSpec, BotTable, default_bot
from gateway.core.contracts import Keys
from gateway.runtime import bots as registry_module
from gateway.runtime.bots import BotRegistry
from tests.helpers import RedisProcess, wait_for

pytestmark = pytest.mark.integration

KEYS = Keys("tg", 4)
TOKEN_ENV = "1000001:EEEEeeeeEEEEeeeeEEEEeeee00"
TOKEN_A = "1111111:AAAAaaaaAAAAaaaaAAAAaaaa01"
TOKEN_A2 = "1111111:ZZZZzzzzZZZZzzzzZZZZzzzz09"
TOKEN_B = "2222222:BBBBbbbbBBBBbbbbBBBBbbbb02"


def stored(token: str, name: str) -> BotSpec:
    return BotSpec.from_record(
        {"name": name, "token": token, "path_key": f"{name}-path-0123456789"}, "redis"
    )


async def put(redis: aioredis.Redis, bot: BotSpec) -> None:
    await redis.hset(KEYS.bots, str(bot.bot_id), orjson.dumps(bot.to_record()))


def write_file(path: Path, *bots: tuple[str, str]) -> None:
    """Rewrite the file (its inode and size change with the bots, so the test does not
    depend on the file system's mtime resolution either way)."""
    text = "".join(f'[[bot]]\nname = "{n}"\ntoken = "{t}"\n' for n, t in bots)
    tmp = path.with_suffix(".new")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def names(table: BotTable) -> list[tuple[str, str]]:
    return [(b.name, b.source) for b in table]


async def hgetalls(redis: aioredis.Redis) -> int:
    """How many HGETALLs the server has run (the registry's reads of ``Keys.bots``)."""
    stats: dict[str, Any] = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_redis_and_file_sources_merge_with_the_default_bot(
    redis: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default bot, the file's and Redis's; the file's definition of a bot id wins over
    a Redis record of it, and the record left out is said once, not every refresh."""
    file = tmp_path / "bots.toml"
    write_file(file, ("filed", TOKEN_A))
    await put(redis, stored(TOKEN_A, "shadowed"))
    await put(redis, stored(TOKEN_B, "stored"))
    registry = BotRegistry(redis, KEYS, default=default_bot(TOKEN_ENV), file=file)
    with caplog.at_level(logging.ERROR, logger=registry_module.__name__):
        table = await registry.load()
        await registry.refresh()
        await registry.refresh()
    assert names(table) == [("default", "env"), ("filed", "file"), ("stored", "redis")]
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert left_out == [
        "bot registry: bot 'shadowed' (redis) left out: its bot id 1111111 is 'filed''s (file)"
    ]
    assert registry.get(2222222) is not None and registry.table.find("filed") is not None


async def test_a_changed_file_is_read_again_and_an_unchanged_one_is_not(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    file = tmp_path / "bots.toml"
    write_file(file, ("one", TOKEN_A))
    changes: list[tuple[int, int]] = []
    registry = BotRegistry(
        None, KEYS, file=file, on_change=lambda old, new: changes.append((len(old), len(new)))
    )
    await registry.load()
    assert changes == [(0, 1)]
    await registry.refresh()
    assert changes == [(0, 1)] and registry.table.version == 1  # nothing changed: no swap
    write_file(file, ("one", TOKEN_A), ("two", TOKEN_B))
    await registry.refresh()
    assert names(registry.table) == [("one", "file"), ("two", "file")]
    assert changes == [(0, 1), (1, 2)] and registry.table.version == 2


async def test_a_broken_file_keeps_the_bots_it_defined_and_is_reported_once(
    redis: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "bots.toml"
    write_file(file, ("one", TOKEN_A))
    registry = BotRegistry(None, KEYS, file=file)
    await registry.load()
    file.write_text("[[bot]\nthis is not toml", encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger=registry_module.__name__):
        await registry.refresh()
        await registry.refresh()
    assert names(registry.table) == [("one", "file")]
    # (errors only: an INFO of the load above is captured too when another test of this
    # process turned the gateway's loggers up to INFO)
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith(f"BOTS_FILE: {file} is not valid TOML")
    assert line.endswith("; keeping the bots it defined before")
    file.unlink()  # gone: still kept
    await registry.refresh()
    assert names(registry.table) == [("one", "file")]
    write_file(file, ("two", TOKEN_B))  # fixed: read again
    await registry.refresh()
    assert names(registry.table) == [("two", "file")]


async def test_redis_changes_are_picked_up_add_rotate_remove(redis: aioredis.Redis) -> None:
    registry = BotRegistry(redis, KEYS)
    assert len(await registry.load()) == 0
    await put(redis, stored(TOKEN_A, "shop"))
    await registry.refresh()
    bot = registry.get(1111111)
    assert bot is not None and bot.token == TOKEN_A
    await put(redis, stored(TOKEN_A2, "shop"))  # `bots rotate-token`: same id, new token
    await registry.refresh()
    bot = registry.get(1111111)
    assert bot is not None and bot.token == TOKEN_A2
    await redis.hdel(KEYS.bots, "1111111")
    await registry.refresh()
    assert registry.get(1111111) is None


async def test_a_bad_record_is_skipped_and_the_others_serve(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Not JSON, JSON that is no table, a record filed under another bot's id: skipped."""
    await put(redis, stored(TOKEN_B, "good"))
    await redis.hset(KEYS.bots, "3", b"{not json")
    await redis.hset(KEYS.bots, "4", b"[1, 2]")
    await redis.hset(KEYS.bots, "5", orjson.dumps(stored(TOKEN_A, "misfiled").to_record()))
    registry = BotRegistry(redis, KEYS)
    with caplog.at_level(logging.ERROR, logger=registry_module.__name__):
        await registry.load()
    assert names(registry.table) == [("good", "redis")]
    skipped = sorted(r.getMessage().split(" skipped")[0] for r in caplog.records)
    assert skipped == [f"bot registry: record {n}" for n in ("3", "4", "5")]
    assert not any("AAAAaaaa" in r.getMessage() for r in caplog.records)


async def test_redis_down_keeps_the_last_bots(own_redis: RedisProcess) -> None:
    """A Redis blip must not unregister every bot: the last read stays until Redis answers."""
    redis = aioredis.Redis.from_url(own_redis.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        await put(redis, stored(TOKEN_A, "shop"))
        registry = BotRegistry(redis, KEYS, default=default_bot(TOKEN_ENV))
        await registry.load()
        own_redis.stop()
        await registry.refresh()
        assert names(registry.table) == [("default", "env"), ("shop", "redis")]
        own_redis.start()  # a new, empty server: the record is gone for real now
        await registry.refresh()
        assert names(registry.table) == [("default", "env")]
    finally:
        await redis.aclose()


async def test_lookup_reads_again_on_a_miss_at_most_once_per_miss_refresh(
    redis: aioredis.Redis,
) -> None:
    """A bot added a moment ago is found by the next lookup; a flood of unknown ids reads
    Redis at most once per ``MISS_REFRESH``; a known bot costs no read."""
    now = [1000.0]
    registry = BotRegistry(redis, KEYS, clock=lambda: now[0])
    await registry.load()
    reads = await hgetalls(redis)
    await put(redis, stored(TOKEN_A, "shop"))
    found = await registry.lookup(1111111)
    assert found is not None and found.name == "shop"
    assert await hgetalls(redis) == reads + 1
    now[0] += registry_module.MISS_REFRESH
    for _ in range(20):
        assert await registry.lookup(999) is None  # unknown: one read for all twenty
    assert await registry.lookup(1111111) is not None  # known: no read
    assert await hgetalls(redis) == reads + 2
    await put(redis, stored(TOKEN_B, "late"))
    assert await registry.lookup(2222222) is None  # within MISS_REFRESH: not read again
    assert await hgetalls(redis) == reads + 2
    now[0] += registry_module.MISS_REFRESH
    assert await registry.lookup(2222222) is not None
    assert await hgetalls(redis) == reads + 3


async def test_a_miss_during_a_read_waits_for_it(redis: aioredis.Redis) -> None:
    """Two entries of a just-added bot: the second lookup, made while the first one's read
    is under way, gets the bot too (it used to answer None: rate-limited)."""
    registry = BotRegistry(redis, KEYS)
    await registry.load()
    await put(redis, stored(TOKEN_A, "shop"))
    await redis.execute_command("CLIENT", "PAUSE", "300", "ALL")  # the read waits 0.3 s
    first = asyncio.create_task(registry.lookup(1111111))
    await wait_for(registry._refreshing.locked, timeout=5, interval=0, message="read started")
    second = await registry.lookup(1111111)
    assert second is not None and await first is second


async def test_run_refreshes_until_stopped(redis: aioredis.Redis) -> None:
    registry = BotRegistry(redis, KEYS, refresh=0.2)
    await registry.load()
    stop = asyncio.Event()
    task = asyncio.create_task(registry.run(stop))
    try:
        await put(redis, stored(TOKEN_A, "shop"))
        await wait_for(lambda: registry.get(1111111), timeout=10, message="the added bot")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_put_record_is_a_compare_and_set(redis: aioredis.Redis) -> None:
    """Written only over the record read; a name or path another record holds is refused;
    what `bots` reads back is what it wrote."""
    from gateway.runtime.bot_admin import RecordChanged, put_record, read_records

    shop = stored(TOKEN_A, "shop")
    assert await put_record(redis, KEYS, shop, expected=None) is None
    with pytest.raises(RecordChanged):  # a second `add` of the same id
        await put_record(redis, KEYS, shop, expected=None)
    assert await put_record(redis, KEYS, stored(TOKEN_B, "shop"), expected=None) == "name 1111111"
    same_path = BotSpec.from_record(
        {**stored(TOKEN_B, "b").to_record(), "path_key": shop.path_key}, "redis"
    )
    assert await put_record(redis, KEYS, same_path, expected=None) == "path 1111111"
    [(field_, read)] = (await read_records(redis, KEYS)).items()
    assert field_ == "1111111" and read.bot == shop
    rotated = stored(TOKEN_A2, "shop")
    assert await put_record(redis, KEYS, rotated, expected=read.raw) is None
    with pytest.raises(RecordChanged):  # a stale read: rotated meanwhile
        await put_record(redis, KEYS, shop, expected=read.raw, delete=True)
    current = (await read_records(redis, KEYS))["1111111"]
    assert current.bot == rotated
    assert await put_record(redis, KEYS, rotated, expected=current.raw, delete=True) is None
    assert await redis.hlen(KEYS.bots) == 0
