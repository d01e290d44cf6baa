"""Streamed replies through the whole path (emulator -> ingress -> worker -> a scripted
HTTP pipeline -> callback -> sender -> emulator) and the sender's draft rules on real
Redis: drafts are throttled per chat, shown at once or dropped, never dead-lettered, never
after their final; the final is the one persisted message."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.app.roles import serve_sender
from gateway.core.contracts import OutboundEntry
from gateway.core.drafts import DRAFT_METHOD, draft_id
from gateway.core.tokens import Route
from gateway.runtime.streams import ensure_groups, publish_outbound
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, all_roles, dead_letters, make_config, results, running, wait_for
from tests.integration.test_rich_flow import ScriptedPipeline

pytestmark = pytest.mark.integration

ALICE = 6123456789
GROUP = -1002143658709
WORDS = [f"w{i}" for i in range(14)]


@pytest.fixture
async def pipeline() -> AsyncIterator[ScriptedPipeline]:
    server = ScriptedPipeline()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def draft_entries(redis: aioredis.Redis, cfg: Any) -> int:
    """sendMessageDraft entries ever stored in the outbound streams."""
    found = 0
    for name in cfg.keys.all_outbound():
        found += sum(f.get(b"method") == DRAFT_METHOD.encode() for _, f in await redis.xrange(name))
    return found


async def stream(pipeline: ScriptedPipeline, index: int, key: str) -> list[int]:
    """The pipeline streams WORDS one by one (the whole text so far each time, ~8 per
    second, as an LLM's tokens come): the draft ids answered."""
    ids, started = [], time.monotonic()
    for n in range(1, len(WORDS) + 1):
        status, answer = await pipeline.callback(
            index, {"draft": " ".join(WORDS[:n]), "reply_key": key}
        )
        assert status == 200, answer
        ids.append(answer["draft_id"])
        due = started + 0.12 * n
        await wait_for(lambda due=due: time.monotonic() >= due, interval=0.01)
    return ids


async def test_a_streamed_reply_ends_in_exactly_one_persisted_message(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ScriptedPipeline
) -> None:
    """14 drafts in ~1.7 s, then the final: the user saw drafts (at most one a second, one
    bubble, each a prefix of the answer, none after it) and one message, the final."""
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    final = " ".join(WORDS) + "."
    async with running(*all_roles(cfg)):
        emu.user_send(ALICE, "explain GCRA")
        ids = await stream(pipeline, 0, "answer-1")
        status, answer = await pipeline.callback(0, {"content": final, "reply_key": "answer-1"})
        assert status == 200, answer
        [final_id] = answer["reply_ids"]
        await emu.wait_messages(ALICE, 1, timeout=15)

        async def final_result() -> list[dict[str, str]]:
            return [r for r in await results(redis, cfg) if r["reply_id"] == final_id]

        [result] = await wait_for(final_result, timeout=15, message="the final's result")
    assert [m["text"] for m in emu.messages(ALICE)] == [final]
    assert result["ok"] == "1"
    assert [r for r in await results(redis, cfg) if r["method"] == DRAFT_METHOD] == []
    assert await dead_letters(redis, cfg) == []
    drafts = emu.drafts(ALICE)
    assert len(set(ids)) == 1 and {d["draft_id"] for d in drafts} == set(ids)
    assert 1 <= len(drafts) < len(ids)  # the user saw drafts, not every one
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(drafts)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    assert all(final.startswith(d["text"]) for d in drafts)
    [sent] = emu.sent()
    assert all(d["ts"] < sent["ts"] for d in drafts)  # none after the final
    assert not any(d["visible"] for d in drafts)  # the final message ended the preview


async def test_a_group_gets_no_draft_only_the_final(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ScriptedPipeline
) -> None:
    """Drafts for a group are answered 200 "skipped" and stored nowhere; the final goes."""
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        emu.user_send(ALICE, "explain it", chat_id=GROUP, chat_type="supergroup")
        status, answer = await pipeline.callback(0, {"draft": "Thinking", "reply_key": "k"})
        assert status == 200 and answer["reply_ids"] == [], answer
        assert answer["draft"].startswith("skipped: drafts are shown in private chats only")
        assert await draft_entries(redis, cfg) == 0
        status, _ = await pipeline.callback(0, {"content": "The answer", "reply_key": "k"})
        assert status == 200
        [message] = await emu.wait_messages(GROUP, 1, timeout=15)
    assert message["text"] == "The answer"
    assert emu.stats()["requests"].get(DRAFT_METHOD, 0) == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"draft": "x" * 4097, "reply_key": "k"}, "'draft' is longer than 4096 characters"),
        ({"draft": "", "reply_key": "k"}, "'draft' is empty"),
        ({"draft": 17, "reply_key": "k"}, "'draft' must be a string"),
        ({"draft": None, "reply_key": "k", "content": ""}, "no reply text"),
        (
            {"draft": "a", "reply_key": "k", "buttons": [[{"text": "Y", "callback_data": "y"}]]},
            "'draft' cannot be combined with buttons",
        ),
        ({"draft": "a"}, "a draft needs its 'reply_key'"),
        ({"draft": "a", "reply_key": "no spaces please"}, "'reply_key' must be"),
    ],
)
async def test_a_hostile_draft_body_is_422_with_its_reason_and_nothing_stored(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    pipeline: ScriptedPipeline,
    body: dict[str, Any],
    reason: str,
) -> None:
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        emu.user_send(ALICE, "explain it")
        status, answer = await pipeline.callback(0, body)
        assert status == 422, answer
        assert answer["ok"] is False and reason in answer["error"], answer
        assert await draft_entries(redis, cfg) == 0
    assert emu.stats()["requests"].get(DRAFT_METHOD, 0) == 0


# --- the sender's rules, on entries published directly ------------------------------------

ROUTE = Route(BOT_ID, ALICE, None, 4242, 0)
DRAFT_ID = draft_id(ROUTE, "k")


def draft(text: str, key: str = "k", **kw: Any) -> OutboundEntry:
    kw.setdefault("deadline", time.time() + 5)
    payload = {"draft_id": draft_id(ROUTE, key), "text": text}
    return OutboundEntry(bot_id=BOT_ID, chat_id=ALICE, method=DRAFT_METHOD, payload=payload, **kw)


def message(text: str, reply_id: str) -> OutboundEntry:
    return OutboundEntry(bot_id=BOT_ID, chat_id=ALICE, payload={"text": text}, reply_id=reply_id)


async def test_drafts_queued_when_their_final_is_stored_or_past_their_deadline_are_dropped(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """A draft still queued when its final is stored (the final's mark is set before its
    entry), and a draft that waited past its deadline, are never shown."""
    emu.add_chat(ALICE, type="private")
    cfg = make_config(redis_url, emu.api_url)
    await ensure_groups(redis, cfg.keys)
    final_mark = (cfg.keys.draft_final(BOT_ID, ALICE, DRAFT_ID), 60)
    await publish_outbound(redis, cfg.keys, [draft("old", "other", deadline=time.time() - 1)])
    # The final is stored (its mark first) while a draft of it still waits in the stream.
    await publish_outbound(redis, cfg.keys, [draft("queued")])
    await publish_outbound(redis, cfg.keys, [message("final", "m-final")], marks=[final_mark])
    async with running(lambda stop: serve_sender(cfg, stop)):
        await emu.wait_messages(ALICE, 1, timeout=15)  # the lane handled the drafts before
    assert [m["text"] for m in emu.messages(ALICE)] == ["final"]
    assert emu.drafts(ALICE) == []
    assert emu.stats()["requests"].get(DRAFT_METHOD, 0) == 0
    assert await dead_letters(redis, cfg) == []


async def test_a_refused_draft_is_dropped_and_a_429_pauses_the_chats_drafts_only(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """A 502 on a draft: no retry, no dead letter. A 429: that chat's drafts wait its
    retry_after, its messages do not."""
    emu.add_chat(ALICE, type="private")
    cfg = make_config(redis_url, emu.api_url)
    await ensure_groups(redis, cfg.keys)
    emu.faults.fail_next(DRAFT_METHOD, 1, status=502)
    async with running(lambda stop: serve_sender(cfg, stop)):
        await publish_outbound(redis, cfg.keys, [draft("one"), message("first", "m1")])
        await emu.wait_messages(ALICE, 1, timeout=15)
        assert emu.stats()["requests"][DRAFT_METHOD] == 1  # tried once, not again
        emu.faults.flood_chat(ALICE, retry_after=30)
        due = time.monotonic() + 1.1  # the chat's draft schedule has room again
        await wait_for(lambda: time.monotonic() >= due, timeout=5)
        await publish_outbound(redis, cfg.keys, [draft("two"), message("second", "m2")])
        await emu.wait_messages(ALICE, 2, timeout=15)  # not held by the drafts' 429
        assert await redis.pttl(cfg.keys.draft_flood(BOT_ID, ALICE)) > 20_000
        assert await redis.exists(cfg.keys.flood_wait(BOT_ID, ALICE)) == 0
        due = time.monotonic() + 1.1  # the schedule has room again, the 429's wait not
        await wait_for(lambda: time.monotonic() >= due, timeout=5)
        await publish_outbound(redis, cfg.keys, [draft("three"), message("third", "m3")])
        await emu.wait_messages(ALICE, 3, timeout=15)
    assert emu.stats()["requests"][DRAFT_METHOD] == 2  # "three" waited for the 429: dropped
    assert emu.drafts(ALICE) == []  # neither shown
    assert await dead_letters(redis, cfg) == []
    assert sorted(r["reply_id"] for r in await results(redis, cfg)) == ["m1", "m2", "m3"]
