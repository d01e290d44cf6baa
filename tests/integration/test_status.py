"""`tg-gateway streams` counts live processes by their heartbeats: an idle deployment
is live, whatever its consumers' idle times say."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.app.roles import serve_sender, serve_worker
from gateway.core.contracts import partition_for, update_fields
from gateway.runtime import status
from gateway.runtime.status import render, stream_status
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, FIXTURES, make_config, running, wait_for

pytestmark = pytest.mark.integration

TEXT = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())
ALICE = TEXT["message"]["chat"]["id"]
IDLE_MS = 1500  # stands in for the 30 s threshold: "no traffic for longer than that"


async def test_an_idle_worker_and_sender_are_shown_live(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status, "LIVE_IDLE_MS", IDLE_MS)
    emu.add_chat(ALICE, type="private")
    cfg = make_config(redis_url, emu.api_url)
    update = copy.deepcopy(TEXT)
    await ensure_groups(redis, cfg.keys)
    fields: Any = update_fields(
        bot_id=BOT_ID,
        update_id=update["update_id"],
        chat_id=ALICE,
        source="replay",
        raw_update=orjson.dumps(update),
    )
    await redis.xadd(cfg.keys.updates(partition_for(ALICE, cfg.keys.partitions, BOT_ID)), fields)
    async with running(lambda stop: serve_worker(cfg, stop), lambda stop: serve_sender(cfg, stop)):
        await emu.wait_messages(ALICE, 1, timeout=20)  # one exchange, then nothing

        async def idle() -> dict[str, Any] | None:
            snap = await stream_status(redis, cfg.keys)
            consumers = [c for r in snap["roles"].values() for c in r["consumers"].values()]
            quiet = all(c["idle_ms"] > IDLE_MS for c in consumers)
            return snap if len(consumers) == 2 and quiet else None

        snap = await wait_for(idle, timeout=20, interval=0.2, message="consumers idle")
    worker, sender = snap["roles"]["worker"], snap["roles"]["sender"]
    assert [n.split("-")[0] for n in worker["live"]] == ["worker"]
    assert [n.split("-")[0] for n in sender["live"]] == ["sender"]
    assert worker["live_by"] == sender["live_by"] == "heartbeat"
    text = render(snap)
    assert "workers: 1 live (worker-" in text and "senders: 1 live (sender-" in text
    # and once they stopped (left the membership), nobody is live
    after = await stream_status(redis, cfg.keys)
    assert after["roles"]["worker"]["live"] == after["roles"]["sender"]["live"] == []
