"""/stats and /admin against the emulator: operators (ADMIN_USER_IDS) see real numbers and
act through the menu's buttons; everyone else's /stats goes to the pipeline, and their
presses on an operator's buttons change nothing."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import decode_fields
from gateway.testkit.emulator import Emulator
from gateway.testkit.reference.app import ReferencePipelineServer
from tests.helpers import all_roles, dead_letters, make_config, running, wait_for
from workers.worker.admin import NOT_ALLOWED

pytestmark = pytest.mark.integration

ADMIN = 6123456789
USER = 5550001


@pytest.fixture
async def pipeline() -> AsyncIterator[ReferencePipelineServer]:
    server = ReferencePipelineServer(mode="sync")
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


def config(redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer) -> Any:
    return make_config(
        redis_url,
        emu.api_url,
        pipeline={"pipeline_url": pipeline.base_url},
        worker={"admin_user_ids": [ADMIN]},
    )


def contents(pipeline: ReferencePipelineServer) -> list[str]:
    return [r["content"] for r in pipeline.requests]


def button(message: dict[str, Any], label_starts: str) -> str:
    """The callback data of the message's button whose label starts so."""
    for row in message["reply_markup"]["inline_keyboard"]:
        for b in row:
            if b["text"].startswith(label_starts):
                return str(b["callback_data"])
    raise AssertionError(f"no button {label_starts!r} in {message.get('reply_markup')}")


async def press_data(emu: Emulator, user: int, message: dict[str, Any], data: str) -> str:
    """``user`` presses a button with ``data`` on ``message``; the press's answer."""
    before = len(emu.callback_answers())
    emu.user_press(user, ADMIN, message["message_id"], data)
    await wait_for(lambda: len(emu.callback_answers()) > before, 15, message="the answer")
    return str(emu.callback_answers()[-1].get("text", ""))


async def press(emu: Emulator, message: dict[str, Any], label: str) -> dict[str, Any]:
    """The admin presses ``label``; the message the press is answered with."""
    have = len(emu.messages(ADMIN))
    await press_data(emu, ADMIN, message, button(message, label))
    return (await emu.wait_messages(ADMIN, have + 1, timeout=15))[have]


async def command(emu: Emulator, text: str) -> dict[str, Any]:
    """The admin sends ``text``; the bot's answer."""
    have = len(emu.messages(ADMIN))
    emu.user_send(user_id=ADMIN, text=text)
    return (await emu.wait_messages(ADMIN, have + 1, timeout=15))[have]


async def test_admin_sees_the_last_hour_with_real_numbers(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    """Updates in, replies sent, a dead letter by reason and a 429: as Redis recorded them."""
    cfg = config(redis_url, emu, pipeline)
    async with running(*all_roles(cfg)):
        pipeline.faults.fail_next(400, 1)  # the first question is dead-lettered
        emu.faults.flood_chat(USER, retry_after=1, count=1)  # its apology meets a 429
        for text in ("first", "second", "third"):
            emu.user_send(user_id=USER, text=text, first_name="Uma")
            await emu.wait_messages(USER, len(emu.messages(USER)) + 1, timeout=15)

        async def sent() -> int:
            rows = [decode_fields(f) for _, f in await redis.xrange(cfg.keys.results)]
            return sum(r["ok"] == "1" and r["method"] == "sendMessage" for r in rows)

        replies = 3  # the apology and two answers, once their results are written
        await wait_for(lambda: _equal(sent(), replies), 10, message="results")
        emu.user_send(user_id=ADMIN, text="/stats")
        [stats] = await emu.wait_messages(ADMIN, 1, timeout=15)
    text = stats["text"]
    assert "updates in: 4" in text, text  # three questions and the /stats itself
    assert f"replies sent: {replies} (failed: 0)" in text, text
    assert "dead letters: 1: pipeline_rejected 1" in text, text
    assert "429s: 1" in text, text
    assert re.search(r"lag now: workers \d+ \(pending \d+\); senders \d+", text), text
    assert "/stats" not in contents(pipeline)


async def test_everyone_else_s_stats_and_admin_go_to_the_pipeline(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    cfg = config(redis_url, emu, pipeline)
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=USER, text="/stats", first_name="Uma")
        emu.user_send(user_id=USER, text="/admin", first_name="Uma")
        replies = await emu.wait_messages(USER, 2, timeout=15)
    assert contents(pipeline) == ["/stats", "/admin"]
    assert all("reply_markup" not in r and "Last hour" not in r["text"] for r in replies)


async def test_requeue_through_the_menu_moves_dead_letters_back(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    """Menu → by reason → requeue → confirm: the dead letters go back and are answered."""
    cfg = config(redis_url, emu, pipeline)
    async with running(*all_roles(cfg)):
        pipeline.faults.fail_next(400, 2)
        emu.user_send(user_id=USER, text="one", first_name="Uma")
        emu.user_send(user_id=USER, text="two", first_name="Uma")
        await wait_for(lambda: _dead_count(redis, cfg, 2), 15, message="two dead letters")
        menu = await command(emu, "/admin")
        assert "Dead letters: 2" in menu["text"]
        by_reason = await press(emu, menu, "Dead letters by reason")
        assert "pipeline_rejected: 2" in by_reason["text"]
        confirm = await press(emu, by_reason, "Requeue pipeline_rejected (2)")
        assert await dead_letters(redis, cfg) != []  # nothing moves before the confirm
        done = await press(emu, confirm, "Yes, requeue 2")
        assert "Requeued 2" in done["text"]
        await wait_for(lambda: contents(pipeline).count("two") == 2, 15, message="re-sent")
    assert await dead_letters(redis, cfg) == []
    assert contents(pipeline) == ["one", "two", "one", "two"]


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _dead_count(redis: aioredis.Redis, cfg: Any, n: int) -> bool:
    return int(await redis.xlen(cfg.keys.dead)) == n


async def test_pause_holds_updates_and_resume_releases_all_in_order(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    cfg = config(redis_url, emu, pipeline)
    texts = [f"message {i}" for i in range(6)]
    async with running(*all_roles(cfg)):
        menu = await command(emu, "/admin")
        assert "Pipeline: running" in menu["text"]
        paused = await press(emu, menu, "Pause the pipeline")
        assert "Pipeline: PAUSED" in paused["text"]
        assert await redis.exists(cfg.keys.pipeline_paused)
        for i, text in enumerate(texts):
            emu.user_send(user_id=USER + i % 2, text=text, first_name="Uma")
        await asyncio.sleep(3.0)  # a few pause polls
        assert pipeline.requests == []
        assert emu.messages(USER) == [] and emu.messages(USER + 1) == []
        assert "Last hour" in (await command(emu, "/stats"))["text"]  # commands still answered
        await press(emu, paused, "Resume the pipeline")
        await wait_for(lambda: len(pipeline.requests) == len(texts), 15, message="released")
        await emu.wait_messages(USER, 3, timeout=15)
        await emu.wait_messages(USER + 1, 3, timeout=15)
    assert not await redis.exists(cfg.keys.pipeline_paused)
    got = contents(pipeline)
    assert sorted(got) == sorted(texts)
    for chat in (0, 1):  # each chat's order held
        assert [t for t in got if int(t[-1]) % 2 == chat] == texts[chat::2]
    assert await dead_letters(redis, cfg) == []


async def test_a_non_admin_pressing_an_operator_button_changes_nothing(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    """A forwarded or forged button: only the press's answer, no pause, no requeue."""
    cfg = config(redis_url, emu, pipeline)
    async with running(*all_roles(cfg)):
        pipeline.faults.fail_next(400, 1)
        emu.user_send(user_id=USER, text="lost", first_name="Uma")
        await wait_for(lambda: _dead_count(redis, cfg, 1), 15, message="a dead letter")
        [dead_id] = [i.decode() for i, _ in await redis.xrange(cfg.keys.dead)]
        menu = await command(emu, "/admin")
        before = len(emu.messages(ADMIN))
        for data in ("gwadm:pause", f"gwadm:rqok:pipeline_rejected:{dead_id}", "gwadm:dlq"):
            assert await press_data(emu, USER, menu, data) == NOT_ALLOWED
        # The admin's own malformed presses: answered, nothing done.
        for data in ("gwadm:rqok:no_such_reason:1-0", "gwadm:rqok:pipeline_rejected:x", "gwadm:"):
            assert await press_data(emu, ADMIN, menu, data) == "Unknown button."
        await asyncio.sleep(0.5)
    assert not await redis.exists(cfg.keys.pipeline_paused)
    assert len(await dead_letters(redis, cfg)) == 1
    assert len(emu.messages(ADMIN)) == before  # no menu, no confirmation
    assert contents(pipeline) == ["lost"]


async def test_the_cli_pauses_and_resumes_without_telegram(
    redis: aioredis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`tg-gateway pipeline-pause on|status|off`: the flag /admin sets, with its TTL."""
    from gateway.app.cli import main
    from gateway.core.settings import RedisSettings, load

    monkeypatch.setenv("REDIS_URL", redis_url)
    keys = load(RedisSettings).keys
    assert await asyncio.to_thread(main, ["pipeline-pause", "on", "--for", "120"]) == 0
    assert 0 < int(await redis.ttl(keys.pipeline_paused)) <= 120
    assert await asyncio.to_thread(main, ["pipeline-pause", "status"]) == 0
    assert await asyncio.to_thread(main, ["pipeline-pause", "off"]) == 0
    assert not await redis.exists(keys.pipeline_paused)
    out = capsys.readouterr().out
    assert "paused for" in out and out.strip().endswith("pipeline: running")


async def test_stats_and_the_pause_work_on_a_cluster(cluster_redis: aioredis.Redis) -> None:
    """The keys /stats reads live on several nodes: one pass reads them all, bounded."""
    from gateway.core.contracts import Keys, dead_fields
    from gateway.core.contracts.dead import Reason, Stage
    from gateway.runtime.activity import hour_stats
    from gateway.runtime.pause import pause_left, set_paused
    from gateway.runtime.streams import ensure_groups, fields_arg

    keys = Keys("tg", 4)
    await ensure_groups(cluster_redis, keys)
    for p in range(4):
        await cluster_redis.xadd(keys.updates(p), {"schema": "1"})
    dead = dead_fields(
        stage=Stage.SENDER,
        reason=Reason.BOT_BLOCKED,
        stream=keys.outbound(0),
        entry_id="1-0",
        entry={},
        attempts=1,
        error="403",
    )
    await cluster_redis.xadd(keys.dead, fields_arg(dead))
    minute = int(time.time()) // 60
    await cluster_redis.set(keys.counter_minute("flood_waits", minute), 2)
    st = await hour_stats(cluster_redis, keys)
    assert st.updates_in.value == 4 and not st.updates_in.approx
    assert st.lag["workers"] == (4, 0)
    assert dict(st.dead) == {"bot_blocked": 1}
    assert st.flood_waits == 2
    await set_paused(cluster_redis, keys, True, 60)
    assert 0 < (await pause_left(cluster_redis, keys) or 0) <= 60
    await set_paused(cluster_redis, keys, False)
    assert await pause_left(cluster_redis, keys) is None
