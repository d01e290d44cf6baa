"""A worker that starts while the Bot API is down still feeds the pipeline (issue 9)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.app.roles import make_bot, serve_worker
from gateway.app.worker_bots import learn_me
from gateway.core.contracts import partition_for, update_fields
from gateway.core.errors import TelegramFatal
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, FIXTURES, make_config, running, wait_for

pytestmark = pytest.mark.integration

TEXT = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())
ALICE = TEXT["message"]["chat"]["id"]


async def test_a_worker_started_while_getme_fails_still_feeds_the_pipeline(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    emu.add_chat(ALICE, type="private")
    emu.faults.fail_next("getMe", 1_000_000, status=502)  # the Bot API is down
    cfg = make_config(redis_url, emu.api_url)
    await ensure_groups(redis, cfg.keys)
    update: dict[str, Any] = copy.deepcopy(TEXT)
    update["update_id"] = 900_001
    p = partition_for(ALICE, cfg.keys.partitions, BOT_ID)
    fields = update_fields(
        bot_id=BOT_ID,
        update_id=update["update_id"],
        chat_id=ALICE,
        source="replay",
        raw_update=orjson.dumps(update),
    )
    await redis.xadd(cfg.keys.updates(p), fields)  # type: ignore[arg-type]
    async with running(lambda stop: serve_worker(cfg, stop)):
        # The embedded pipeline answered: the reply is queued for the sender.
        [(_, reply)] = await wait_for(
            lambda: redis.xrange(cfg.keys.outbound(p)), timeout=15, message="a queued reply"
        )
        assert emu.stats()["requests"].get("getMe", 0) >= 1  # it was asked, and failed
    assert reply[b"update_id"] == b"900001"


async def test_a_stop_while_getme_still_fails_is_no_error(emu: Emulator, redis_url: str) -> None:
    """A worker stopped while the Bot API is still down stops cleanly: the getMe that
    failed after the stop is not the role's error (only a 401 is)."""
    emu.faults.fail_next("getMe", 1_000_000, status=502)
    cfg = make_config(redis_url, emu.api_url)
    bot = make_bot(cfg.telegram)
    stop = asyncio.Event()
    stop.set()  # the answer comes back after the stop
    try:
        await learn_me(bot, cfg.telegram, stop)
    finally:
        await bot.session.close()
    assert emu.stats()["requests"].get("getMe", 0) == 1


async def test_a_permanent_getme_error_stops_the_role_not_retried(
    emu: Emulator, redis_url: str
) -> None:
    """getMe's 404 (Telegram's answer to a malformed token) will not change: stop, say so."""
    emu.faults.fail_next("getMe", 1, status=404, html=False)
    cfg = make_config(redis_url, emu.api_url)
    bot = make_bot(cfg.telegram)
    try:
        with pytest.raises(TelegramFatal, match="permanent") as info:
            await asyncio.wait_for(learn_me(bot, cfg.telegram, asyncio.Event()), 10)
    finally:
        await bot.session.close()
    assert info.value.error_code == 404
    assert emu.stats()["requests"].get("getMe", 0) == 1
