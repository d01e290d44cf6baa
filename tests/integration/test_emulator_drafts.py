"""The emulator's sendMessageDraft over real HTTP, as the Bot API documents it: private
chats only, an ephemeral preview (30 s, or until the bot's next message), never a message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.testkit.emulator import Emulator
from tests.helpers import TOKEN

pytestmark = pytest.mark.integration

ALICE = 6123456789
GROUP = -1002143658709


class Clock:
    """The emulator's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def emu(clock: Clock) -> AsyncIterator[Emulator]:
    emulator = Emulator(token=TOKEN, clock=clock)
    await emulator.start()
    emulator.user_send(ALICE, "explain it")
    emulator.add_chat(GROUP, "supergroup", "Team")
    yield emulator
    await emulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, emu: Emulator, method: str, **params: Any
) -> tuple[int, Any]:
    async with http.post(f"{emu.api_url}/bot{TOKEN}/{method}", json=params) as resp:
        return resp.status, await resp.json()


async def draft(http: aiohttp.ClientSession, emu: Emulator, **params: Any) -> tuple[int, Any]:
    return await call(http, emu, "sendMessageDraft", **params)


async def test_a_draft_is_shown_not_stored_and_the_message_replaces_it(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """True; the user sees it; no message exists until sendMessage, which ends it."""
    assert await draft(http, emu, chat_id=ALICE, draft_id=7, text="Thinking about") == (
        200,
        {"ok": True, "result": True},
    )
    [shown] = emu.drafts(ALICE)
    assert (shown["draft_id"], shown["text"], shown["visible"]) == (7, "Thinking about", True)
    assert emu.messages(ALICE) == [] and emu.sent() == []
    assert emu.stats()["requests"]["sendMessageDraft"] == 1
    status, _ = await call(http, emu, "sendMessage", chat_id=ALICE, text="The answer")
    assert status == 200
    assert [d["visible"] for d in emu.drafts(ALICE)] == [False]
    assert [m["text"] for m in emu.messages(ALICE)] == ["The answer"]


async def test_a_draft_lasts_thirty_seconds(
    emu: Emulator, http: aiohttp.ClientSession, clock: Clock
) -> None:
    await draft(http, emu, chat_id=ALICE, draft_id=7, text="Thinking")
    clock.now += 29.9
    assert emu.drafts(ALICE)[0]["visible"] is True
    clock.now += 0.1
    assert emu.drafts(ALICE)[0]["visible"] is False


async def test_the_newest_draft_is_the_one_on_screen(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Same draft_id: the text changes in place; another id replaces the draft."""
    await draft(http, emu, chat_id=ALICE, draft_id=7, text="One")
    await draft(http, emu, chat_id=ALICE, draft_id=7, text="One two")
    await draft(http, emu, chat_id=ALICE, draft_id=8, text="Other")
    got = [(d["draft_id"], d["text"], d["visible"]) for d in emu.drafts(ALICE)]
    assert got == [(7, "One", False), (7, "One two", False), (8, "Other", True)]


async def test_drafts_are_refused_as_the_bot_api_refuses_them(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Groups (TEXTDRAFT_PEER_INVALID), draft_id 0 or none, a text over 4096, unknown chats."""
    cases = [
        ({"chat_id": GROUP, "draft_id": 7, "text": "x"}, "Bad Request: TEXTDRAFT_PEER_INVALID"),
        ({"chat_id": ALICE, "draft_id": 0, "text": "x"}, "Bad Request: draft_id must be non-zero"),
        ({"chat_id": ALICE, "text": "x"}, "Bad Request: draft_id must be non-zero"),
        ({"chat_id": ALICE, "draft_id": 7, "text": "x" * 4097}, "Bad Request: message is too long"),
        ({"chat_id": 999, "draft_id": 7, "text": "x"}, "Bad Request: chat not found"),
        (
            {"chat_id": ALICE, "draft_id": 7, "text": "<b>x", "parse_mode": "HTML"},
            "Bad Request: can't parse entities",
        ),
    ]
    for params, description in cases:
        status, body = await draft(http, emu, **params)
        assert status == 400, params
        assert body["ok"] is False and body["description"].startswith(description), body
    assert emu.drafts(ALICE) == [] and emu.drafts(GROUP) == []


async def test_an_empty_draft_is_the_thinking_placeholder(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Bot API 10.0: text is 0-4096 characters; empty shows "Thinking…"."""
    assert (await draft(http, emu, chat_id=ALICE, draft_id=7))[0] == 200
    assert emu.drafts(ALICE)[0]["text"] == ""


async def test_the_user_side_http_api_shows_the_drafts(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    await draft(http, emu, chat_id=ALICE, draft_id=7, text="<b>Hi</b>", parse_mode="HTML")
    async with http.get(f"{emu.api_url}/_emu/chats/{ALICE}/drafts") as resp:
        assert resp.status == 200
        [shown] = await resp.json()
    assert shown["text"] == "Hi" and shown["visible"] is True
    assert shown["entities"] == [{"type": "bold", "offset": 0, "length": 2}]


async def test_a_draft_stays_with_its_bot(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Another bot's draft to the same user is that bot's (its chat, its user-side view)."""
    other_token = "7000000002:OTHERotherOTHERother000000000"
    other = emu.add_bot(other_token, username="other_bot")
    other.user_send(ALICE, "hi other")
    url = f"{emu.api_url}/bot{other_token}/sendMessageDraft"
    async with http.post(url, json={"chat_id": ALICE, "draft_id": 9, "text": "B"}) as resp:
        assert resp.status == 200
    assert emu.drafts(ALICE) == []
    assert [d["text"] for d in other.drafts(ALICE)] == ["B"]
    async with http.get(
        f"{emu.api_url}/_emu/chats/{ALICE}/drafts", params={"bot": "other_bot"}
    ) as resp:
        assert [d["text"] for d in await resp.json()] == ["B"]
