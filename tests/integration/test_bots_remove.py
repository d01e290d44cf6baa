"""`tg-gateway bots remove`: the bot is marked removing, its webhook deleted, and its record
deleted only once none of its entries is unread or pending (or at once with --now)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import GROUP_SENDERS, GROUP_WORKERS, update_fields
from gateway.runtime import bot_admin
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from tests.helpers import TOKEN, wait_for
from tests.integration.bots_cli import KEYS, OTHER_TOKEN, BotsCli, records

pytestmark = pytest.mark.integration

BOT_ID = int(TOKEN.split(":")[0])
OTHER_ID = int(OTHER_TOKEN.split(":")[0])


@pytest.fixture
async def bots(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
) -> BotsCli:
    """A CLI with bot 'shop' (the emulator's token) registered and its webhook set."""
    cli = BotsCli(monkeypatch, capsys, redis_url)
    cli.env(TELEGRAM_API_URL=emu.api_url, SHOP_TOKEN=TOKEN, OTHER=OTHER_TOKEN)
    assert (await cli("add", "shop", "--token-env", "SHOP_TOKEN")).code == 0
    assert (await cli("add", "outlet", "--token-env", "OTHER", "--no-check")).code == 0
    emu.state.set_webhook("https://gw.example/webhook/x", "s" * 20, 40, None)
    await ensure_groups(redis, KEYS)
    return cli


async def add_update(redis: aioredis.Redis, p: int, bot_id: int, update_id: int) -> str:
    fields = update_fields(
        bot_id=bot_id, update_id=update_id, chat_id=5, source="webhook", raw_update="{}"
    )
    return (await redis.xadd(KEYS.updates(p), fields)).decode()  # type: ignore[arg-type]


async def add_outbound(redis: aioredis.Redis, p: int, bot_id: int) -> str:
    fields = {"schema": "1", "bot_id": str(bot_id), "chat_id": "5", "method": "sendMessage"}
    return (await redis.xadd(KEYS.outbound(p), fields)).decode()  # type: ignore[arg-type]


async def removing_since(redis: aioredis.Redis) -> float | None:
    raw = await redis.hget(KEYS.bots, str(BOT_ID))
    return None if raw is None else orjson.loads(raw).get("removing_since")


async def test_remove_waits_until_no_entry_is_unread_or_pending(
    bots: BotsCli, redis: aioredis.Redis, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unread updates, a reply a sender holds (pending since before the command), and the
    other bot's entries (which must not hold it up); scanned two entries at a time."""
    monkeypatch.setattr(bot_admin, "SCAN_BATCH", 2)
    for i in range(3):
        await add_update(redis, 2, OTHER_ID, 100 + i)  # never consumed
        await add_update(redis, 1, BOT_ID, 200 + i)
    await add_outbound(redis, 0, OTHER_ID)
    sent = await add_outbound(redis, 0, BOT_ID)
    await redis.xreadgroup(GROUP_SENDERS, "s1", {KEYS.outbound(0): ">"}, count=10)

    removal = asyncio.create_task(bots("remove", "shop", "--drain-timeout", "60"))
    await wait_for(lambda: removing_since(redis), message="the bot marked removing")
    await wait_for(lambda: emu.state.webhook is None, message="its webhook deleted")
    # A worker takes the updates (now pending), then finishes them; the sender its reply.
    got = await redis.xreadgroup(GROUP_WORKERS, "w1", {KEYS.updates(1): ">"}, count=10)
    assert not removal.done() and str(BOT_ID) in await records(redis)
    await redis.xack(KEYS.updates(1), GROUP_WORKERS, *[i for i, _ in got[0][1]])
    assert not removal.done() and str(BOT_ID) in await records(redis)
    await redis.xack(KEYS.outbound(0), GROUP_SENDERS, sent)

    ran = await asyncio.wait_for(removal, 30)
    assert ran.code == 0, ran.err
    assert ran.lines[-1] == f"bot 'shop' ({BOT_ID}) removed"
    assert list(await records(redis)) == [str(OTHER_ID)]
    assert await redis.xlen(KEYS.updates(2)) == 3  # the other bot's entries are untouched


async def test_a_reply_its_pipeline_posts_in_the_grace_is_drained_before_the_record_goes(
    bots: BotsCli, redis: aioredis.Redis
) -> None:
    """Drained streams do not end it at once: a late callback's reply (here an outbound
    entry stored during the grace) is waited for too, so a slow pipeline's answer is sent."""
    bots.env(BOTS_REFRESH_SECONDS="0.2")  # the first drain is over at once
    removal = asyncio.create_task(
        bots("remove", "shop", "--drain-timeout", "60", "--reply-grace", "1.5")
    )
    await wait_for(lambda: removing_since(redis), message="the bot marked removing")
    await asyncio.sleep(0.3)  # the streams are drained: the grace runs
    late = await add_outbound(redis, 1, BOT_ID)
    await asyncio.sleep(2.0)  # past the grace: the second drain sees the late reply
    assert not removal.done() and str(BOT_ID) in await records(redis)
    await redis.xreadgroup(GROUP_SENDERS, "s1", {KEYS.outbound(1): ">"}, count=10)
    await redis.xack(KEYS.outbound(1), GROUP_SENDERS, late)
    ran = await asyncio.wait_for(removal, 30)
    assert ran.code == 0, ran.err
    assert any("late replies" in line for line in ran.lines), ran.lines
    assert str(BOT_ID) not in await records(redis)


async def test_past_the_drain_timeout_the_bot_stays_removing(
    bots: BotsCli, redis: aioredis.Redis
) -> None:
    """Exit 1 with what is left; run again with --now to remove it anyway."""
    await add_update(redis, 3, BOT_ID, 300)
    parked = await redis.xadd(KEYS.parked(0), {"bot_id": str(BOT_ID), "update": "{}"})
    ran = await bots("remove", "shop", "--drain-timeout", "0.5")
    assert ran.code == 1, ran.err
    last = ran.lines[-1]
    assert "2 entr(ies) still unread or pending after 0.5 s" in last and "stays removing" in last
    assert KEYS.parked(0) in last and KEYS.updates(3) in last
    first_mark = await removing_since(redis)
    assert first_mark is not None
    again = await bots("remove", "shop", "--drain-timeout", "0.5")
    assert again.code == 1 and await removing_since(redis) == first_mark  # marked once
    await redis.xdel(KEYS.parked(0), parked)
    assert "1 entr(ies) still" in (await bots("remove", "shop", "--drain-timeout", "0.5")).err
    now = await bots("remove", "shop", "--now")
    assert now.code == 0, now.err
    assert str(BOT_ID) not in await records(redis)


async def test_remove_refuses_a_file_or_default_bot_and_an_unknown_one(
    bots: BotsCli, redis: aioredis.Redis, tmp_path: Path
) -> None:
    file = tmp_path / "bots.toml"
    token = "7770001:FILEfileFILEfileFILEfile00"
    file.write_text(f'[[bot]]\nname = "filed"\ntoken = "{token}"\n', encoding="utf-8")
    bots.env(BOTS_FILE=str(file), TELEGRAM_BOT_TOKEN="7770002:ENVenvENVenvENVenvENVenv00")
    before = await records(redis)
    filed = await bots("remove", "filed", "--now")
    assert (
        filed.code == 2 and "defined in BOTS_FILE" in filed.err and "remove it there" in filed.err
    )
    default = await bots("remove", "default", "--now")
    assert default.code == 2 and "TELEGRAM_BOT_TOKEN's" in default.err
    unknown = await bots("remove", "nope")
    assert unknown.code == 1 and "no bot 'nope'" in unknown.err
    assert await records(redis) == before


async def test_bot_entries_counts_unread_and_pending_of_one_bot(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per stream: unread after the group's last-delivered id, pending (delivered before
    the first scan or after it), parked; another bot's entries never count."""
    monkeypatch.setattr(bot_admin, "SCAN_BATCH", 2)
    await ensure_groups(redis, KEYS)
    old = [await add_update(redis, 0, BOT_ID, i) for i in range(3)]
    await add_update(redis, 0, OTHER_ID, 9)
    await redis.xreadgroup(GROUP_WORKERS, "w1", {KEYS.updates(0): ">"}, count=2)  # 2 pending
    unread = [await add_update(redis, 1, BOT_ID, 10 + i) for i in range(5)]
    await add_update(redis, 1, OTHER_ID, 20)
    await add_outbound(redis, 3, BOT_ID)
    scan = bot_admin.BotEntries(redis, KEYS, BOT_ID)
    assert await scan.count() == {KEYS.updates(0): 3, KEYS.updates(1): 5, KEYS.outbound(3): 1}

    await redis.xack(KEYS.updates(0), GROUP_WORKERS, old[0])
    got = await redis.xreadgroup(GROUP_WORKERS, "w1", {KEYS.updates(1): ">"}, count=3)
    assert [i.decode() for i, _ in got[0][1]] == unread[:3]  # read since the scan: pending
    late = await add_outbound(redis, 3, BOT_ID)
    await redis.xadd(KEYS.parked(5), {"bot_id": str(BOT_ID)})
    await redis.xadd(KEYS.parked(5), {"bot_id": str(OTHER_ID)})
    assert await scan.count() == {
        KEYS.updates(0): 2,
        KEYS.updates(1): 5,
        KEYS.outbound(3): 2,
        KEYS.parked(5): 1,
    }

    await redis.xreadgroup(GROUP_WORKERS, "w1", {KEYS.updates(0): ">"}, count=10)
    await redis.xack(KEYS.updates(0), GROUP_WORKERS, *old)
    await redis.xack(KEYS.updates(1), GROUP_WORKERS, *unread[:3])
    await redis.xreadgroup(GROUP_SENDERS, "s1", {KEYS.outbound(3): ">"}, count=10)
    await redis.xack(KEYS.outbound(3), GROUP_SENDERS, late)
    await redis.delete(KEYS.parked(5))
    assert await scan.count() == {KEYS.updates(1): 2, KEYS.outbound(3): 1}
    # the other bot: its update of partition 0 read (pending), its one of partition 1 unread
    other = bot_admin.BotEntries(redis, KEYS, OTHER_ID)
    assert await other.count() == {KEYS.updates(0): 1, KEYS.updates(1): 1}


async def test_a_record_the_default_bot_overrides_goes_alone(
    bots: BotsCli, redis: aioredis.Redis, emu: Emulator
) -> None:
    """'shop' has the default bot's id (TELEGRAM_BOT_TOKEN set after it was added): its
    record is deleted at once, and the default bot's webhook and entries are left alone."""
    bots.env(TELEGRAM_BOT_TOKEN=TOKEN)
    await add_update(redis, 0, BOT_ID, 1)  # the default bot's, unread
    ran = await bots("remove", "shop")
    assert ran.code == 0, ran.err
    assert "env's bot 'default' overrides" in ran.err
    assert emu.state.webhook is not None
    assert str(BOT_ID) not in await records(redis) and await redis.xlen(KEYS.updates(0)) == 1
