"""The sender's rich replies against the emulator, on real Redis: keyboards on a split
reply's last part, the reply record, edits and deletes by reply id, unknown reply ids."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.app.roles import serve_sender
from gateway.core.contracts import OutboundEntry
from gateway.core.replies import TARGET_FIELD
from gateway.runtime.streams import ensure_groups, publish_outbound
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, dead_letters, make_config, results, running, wait_for

pytestmark = pytest.mark.integration

CHAT = 1001
OTHER = 1002
KEYBOARD = {"inline_keyboard": [[{"text": "Yes", "callback_data": "pay:yes"}]]}
LONG = "\n\n".join(f"Paragraph {i}: " + "word " * 500 for i in range(3))  # three parts


@pytest.fixture
def emu(emu: Emulator) -> Emulator:
    for chat in (CHAT, OTHER):
        emu.add_chat(chat, type="private")
    return emu


def entry(method: str, payload: dict[str, Any], chat: int = CHAT, **kw: Any) -> OutboundEntry:
    kw.setdefault("origin", "pipeline")
    return OutboundEntry(bot_id=BOT_ID, chat_id=chat, method=method, payload=payload, **kw)


async def publish(redis: aioredis.Redis, cfg: Any, *entries: OutboundEntry) -> None:
    await ensure_groups(redis, cfg.keys)
    await publish_outbound(redis, cfg.keys, entries)


async def result_of(redis: aioredis.Redis, cfg: Any, reply_id: str) -> dict[str, str]:
    async def found() -> dict[str, str] | None:
        return next((r for r in await results(redis, cfg) if r["reply_id"] == reply_id), None)

    got: dict[str, str] = await wait_for(found, timeout=15, message=f"result of {reply_id}")
    return got


async def test_split_reply_keyboard_record_then_edit_and_delete_by_reply_id(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """The keyboard goes on the last part; the record names all three messages; an edit
    makes the reply one message (the first, edited; the others deleted); a delete then
    removes it; an edit after the delete is unknown_reply."""
    cfg = make_config(redis_url, emu.api_url)
    reply = entry("sendMessage", {"text": LONG, "reply_markup": KEYBOARD}, reply_id="r-long")
    await publish(redis, cfg, reply)
    async with running(lambda stop: serve_sender(cfg, stop)):
        parts = await emu.wait_messages(CHAT, 3, timeout=15)
        await result_of(redis, cfg, "r-long")
        ids = [m["message_id"] for m in parts]
        assert ["reply_markup" in m for m in parts] == [False, False, True]
        key = cfg.keys.reply(BOT_ID, CHAT, "r-long")
        assert orjson.loads(await redis.get(key)) == {"c": CHAT, "m": ids}
        assert 0 < await redis.ttl(key) <= cfg.sender.sender_edit_window_seconds

        edit = entry(
            "editMessageText",
            {TARGET_FIELD: "r-long", "text": "Paid, thank you", "reply_markup": KEYBOARD},
            reply_id="e1",
        )
        await publish(redis, cfg, edit)
        res = await result_of(redis, cfg, "e1")
        assert res["ok"] == "1" and orjson.loads(res["message_ids"]) == ids
        first = emu.message(CHAT, ids[0])
        assert first is not None and first["text"] == "Paid, thank you"
        assert first["reply_markup"] == KEYBOARD
        assert [emu.message(CHAT, m) for m in ids[1:]] == [None, None]
        assert orjson.loads(await redis.get(key)) == {"c": CHAT, "m": ids[:1]}

        delete = entry("deleteMessage", {TARGET_FIELD: "r-long"}, reply_id="d1")
        again = entry("deleteMessage", {TARGET_FIELD: "r-long"}, reply_id="d2")
        late = entry("editMessageText", {TARGET_FIELD: "r-long", "text": "?"}, reply_id="e2")
        await publish(redis, cfg, delete, again, late)
        assert (await result_of(redis, cfg, "d1"))["ok"] == "1"
        assert emu.message(CHAT, ids[0]) is None
        assert (await result_of(redis, cfg, "d2"))["ok"] == "1"  # already deleted: done
        failed = await result_of(redis, cfg, "e2")
    assert failed["ok"] == "0"
    assert failed["description"].startswith("unknown_reply: cannot edit reply r-long")
    [dead] = await dead_letters(redis, cfg)
    assert (dead["reason"], dead["stage"]) == ("unknown_reply", "sender")
    assert await redis.ttl(key) > 0  # rewritten in place, the TTL kept


async def test_unknown_and_other_chats_reply_ids_fail_with_a_reason(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """A reply id never sent, or sent to another chat, is unknown_reply: no Bot API call."""
    cfg = make_config(redis_url, emu.api_url)
    theirs = entry("sendMessage", {"text": "for the other chat"}, chat=OTHER, reply_id="r-other")
    await publish(redis, cfg, theirs)
    async with running(lambda stop: serve_sender(cfg, stop)):
        await result_of(redis, cfg, "r-other")
        bad = [
            entry("editMessageText", {TARGET_FIELD: "nope", "text": "x"}, reply_id="e-none"),
            entry("deleteMessage", {TARGET_FIELD: "r-other"}, reply_id="d-other"),
        ]
        await publish(redis, cfg, *bad)
        got = [await result_of(redis, cfg, e.reply_id) for e in bad]
    assert [r["ok"] for r in got] == ["0", "0"]
    assert "cannot edit reply nope: unknown in chat 1001" in got[0]["description"]
    assert "cannot delete reply r-other: unknown in chat 1001" in got[1]["description"]
    assert [d["reason"] for d in await dead_letters(redis, cfg)] == ["unknown_reply"] * 2
    assert emu.stats()["requests"].get("editMessageText", 0) == 0
    assert emu.stats()["requests"].get("deleteMessage", 0) == 0
    assert emu.message(OTHER, emu.messages(OTHER)[0]["message_id"]) is not None


async def test_an_edit_to_the_same_text_is_done_and_the_gateways_own_messages_unrecorded(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """Telegram's "message is not modified" (a redone edit) counts as done; command
    replies and typing indicators get no record (they are never edited by reply id)."""
    cfg = make_config(redis_url, emu.api_url)
    reply = entry("sendMessage", {"text": "Same"}, reply_id="r-same")
    command = entry("sendMessage", {"text": "/help text"}, reply_id="r-cmd", origin="command")
    await publish(redis, cfg, reply, command)
    async with running(lambda stop: serve_sender(cfg, stop)):
        await result_of(redis, cfg, "r-cmd")
        edit = entry("editMessageText", {TARGET_FIELD: "r-same", "text": "Same"}, reply_id="e")
        await publish(redis, cfg, edit)
        res = await result_of(redis, cfg, "e")
    assert res["ok"] == "1"
    assert emu.stats()["requests"]["editMessageText"] == 1
    assert await redis.exists(cfg.keys.reply(BOT_ID, CHAT, "r-cmd")) == 0
    assert await dead_letters(redis, cfg) == []


async def test_no_edit_window_keeps_no_record(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url, sender={"sender_edit_window_seconds": 0})
    await publish(redis, cfg, entry("sendMessage", {"text": "hi"}, reply_id="r0"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        await result_of(redis, cfg, "r0")
        await publish(redis, cfg, entry("deleteMessage", {TARGET_FIELD: "r0"}, reply_id="d0"))
        res = await result_of(redis, cfg, "d0")
    assert res["ok"] == "0" and "SENDER_EDIT_WINDOW_SECONDS=0" in res["description"]
    assert await redis.exists(cfg.keys.reply(BOT_ID, CHAT, "r0")) == 0
