"""One emulator serving three bots over real HTTP on 127.0.0.1 (issue 15): each bot has its
own updates, messages, webhook, limits, faults and files; an unknown token is 401."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from gateway.testkit.emulator import Emulator, EmulatorLimits
from gateway.testkit.emulator.core import EmulatorCore
from tests.helpers import FIXTURES, TOKEN

pytestmark = pytest.mark.integration

TOKEN_B = "7689012346:BOTBbotbBOTBbotbBOTBbotbBOTBbotb00"
TOKEN_C = "7689012347:BOTCbotcBOTCbotcBOTCbotcBOTCbotc00"
ALICE = 6123456789
UNAUTHORIZED = json.loads((FIXTURES / "responses/err_401_unauthorized.json").read_text())


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


async def make(limits: EmulatorLimits | None = None, clock: FakeClock | None = None) -> Emulator:
    emu = Emulator(token=TOKEN, limits=limits, clock=clock, webhook_retry_delay=0.02)
    emu.add_bot(TOKEN_B, username="brand_b_bot", name="Brand B")
    await emu.start()
    emu.add_bot(TOKEN_C, username="brand_c_bot")  # added while running
    return emu


@pytest.fixture
async def three() -> AsyncIterator[Emulator]:
    emu = await make()
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def http(three: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=three.api_url, timeout=10) as client:
        yield client


async def call(http: httpx.AsyncClient, token: str, method: str, **params: Any) -> httpx.Response:
    return await http.post(f"/bot{token}/{method}", json=params)


async def test_each_token_is_its_own_bot_and_an_unknown_token_is_401(
    three: Emulator, http: httpx.AsyncClient
) -> None:
    """getMe answers each bot as itself; an unknown bot id or a wrong secret is Telegram's 401."""
    for token, username in [
        (TOKEN, "example_gateway_bot"),
        (TOKEN_B, "brand_b_bot"),
        (TOKEN_C, "brand_c_bot"),
    ]:
        me = (await call(http, token, "getMe")).json()["result"]
        assert (me["id"], me["username"], me["is_bot"]) == (
            int(token.split(":")[0]),
            username,
            True,
        )
    assert three.bot(7689012346).state.bot["first_name"] == "Brand B"
    assert three.bot("@brand_c_bot") is three.bot(TOKEN_C) is three.bot("7689012347")
    assert three.bot() is three and three.bot(7689012345) is three
    for token in ["7689012399:BOTBbotbBOTBbotbBOTBbotbBOTBbotb00", "7689012346:wrong", "junk"]:
        resp = await call(http, token, "getMe")
        assert (resp.status_code, resp.json()) == (401, UNAUTHORIZED)
        assert (await http.get(f"/file/bot{token}/photos/file_0.jpg")).status_code == 401
    with pytest.raises(LookupError, match="unknown bot 42"):
        three.bot(42)


async def test_updates_and_sends_stay_with_their_bot(
    three: Emulator, http: httpx.AsyncClient
) -> None:
    """Alice writes to two bots: each bot's getUpdates, messages and stats hold only its own."""
    a, b, c = three, three.bot(TOKEN_B), three.bot(TOKEN_C)
    sent_a = a.user_send(ALICE, "to A")
    sent_b = await http.post("/_emu/send?bot=brand_b_bot", json={"user_id": ALICE, "text": "to B"})
    assert sent_b.status_code == 200, sent_b.text
    # a private chat's id is the user's id for every bot: each numbers its own messages
    assert sent_b.json()["message"]["message_id"] == 1 == sent_a["message"]["message_id"]
    texts: dict[str, list[str]] = {}
    for token in (TOKEN, TOKEN_B, TOKEN_C):
        updates = (await call(http, token, "getUpdates", timeout=0)).json()["result"]
        texts[token] = [u["message"]["text"] for u in updates]
    assert texts == {TOKEN: ["to A"], TOKEN_B: ["to B"], TOKEN_C: []}
    reply = await call(http, TOKEN_B, "sendMessage", chat_id=ALICE, text="B answers")
    assert reply.json()["result"]["from"]["username"] == "brand_b_bot"
    assert [m["text"] for m in await b.wait_messages(ALICE, 1, timeout=5)] == ["B answers"]
    assert a.messages(ALICE) == [] and c.messages(ALICE) == []
    read = await http.get(f"/_emu/chats/{ALICE}/messages", params={"bot": "7689012346"})
    assert [m["text"] for m in read.json()] == ["B answers"]
    assert (await http.get(f"/_emu/chats/{ALICE}/messages")).json() == []  # the first bot's
    stats_b = (await http.get("/_emu/stats?bot=brand_b_bot")).json()
    assert (stats_b["sent"], a.stats()["sent"]) == (1, 0)
    # a chat only bot C never saw is unknown to bot C
    unknown = await call(http, TOKEN_C, "sendMessage", chat_id=ALICE, text="x")
    assert unknown.json()["description"] == "Bad Request: chat not found"


async def test_one_bots_limits_do_not_touch_another() -> None:
    """Bot A past 30/s gets 429 retry_after; B still sends 30 in that second; C's own lower
    limit and paid-broadcast limit apply to C alone."""
    clock = FakeClock()
    emu = await make(EmulatorLimits(), clock)
    c = emu.add_bot(
        "7689012348:BOTDbotdBOTDbotdBOTDbotdBOTDbotd00",
        limits=EmulatorLimits(global_per_second=5, paid_per_second=8),
    )
    try:
        async with httpx.AsyncClient(base_url=emu.api_url, timeout=10) as http:
            for bot in (emu, emu.bot(TOKEN_B), c):
                for chat in range(1, 41):
                    bot.add_chat(chat)

            async def burst(token: str, n: int, **extra: Any) -> list[int]:
                return [
                    (
                        await call(http, token, "sendMessage", chat_id=i, text="x", **extra)
                    ).status_code
                    for i in range(1, n + 1)
                ]

            assert await burst(TOKEN, 31) == [200] * 30 + [429]
            over = await call(http, TOKEN, "sendMessage", chat_id=40, text="x")
            assert over.json()["parameters"] == {"retry_after": 1}
            assert await burst(TOKEN_B, 30) == [200] * 30
            assert await burst(c.token, 6) == [200] * 5 + [429]
            clock.now += 1.0
            assert await burst(c.token, 9, allow_paid_broadcast=True) == [200] * 8 + [429]
        assert (emu.stats()["sent"], emu.stats()["rejected_429"]) == (30, 2)
        assert emu.bot(TOKEN_B).stats()["rejected_429"] == 0
        assert (c.stats()["max_global_1s"], c.stats()["rejected_429"]) == (8, 2)
    finally:
        await emu.stop()


async def test_faults_on_one_bot_leave_the_others_answering(
    three: Emulator, http: httpx.AsyncClient
) -> None:
    """A 401 (over the user side's ``?bot=``) and a 429 storm on bot B only: A and C answer."""
    for bot in three.bots:
        bot.add_chat(ALICE)
    resp = await http.post("/_emu/faults?bot=brand_b_bot", json={"op": "unauthorized"})
    assert resp.status_code == 200
    three.bot(TOKEN_C).faults.flood_global(retry_after=7, count=100)
    b = await call(http, TOKEN_B, "sendMessage", chat_id=ALICE, text="x")
    assert (b.status_code, b.json()) == (401, UNAUTHORIZED)
    c = await call(http, TOKEN_C, "sendMessage", chat_id=ALICE, text="x")
    assert (c.status_code, c.json()["parameters"]) == (429, {"retry_after": 7})
    a = await call(http, TOKEN, "sendMessage", chat_id=ALICE, text="x")
    assert a.status_code == 200
    assert three.faults.floods == [] and not three.faults.is_unauthorized
    await http.delete("/_emu/faults?bot=7689012346")
    assert (await call(http, TOKEN_B, "getMe")).status_code == 200


async def test_webhooks_per_bot_deliver_to_their_own_url_with_their_own_secret(
    three: Emulator, http: httpx.AsyncClient
) -> None:
    """Each bot POSTs its updates to its own URL with its own secret; deleting one webhook
    leaves the other."""
    got: dict[str, list[tuple[str | None, str]]] = {"a": [], "b": []}
    both = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        update = await request.json()
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
        got[request.match_info["name"]].append((secret, update["message"]["text"]))
        if got["a"] and got["b"]:
            both.set()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook/{name}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        for token, name, secret in [(TOKEN, "a", "secret_a"), (TOKEN_B, "b", "secret-b")]:
            resp = await call(http, token, "setWebhook", url=f"{base}/{name}", secret_token=secret)
            assert resp.json()["description"] == "Webhook was set"
        three.user_send(ALICE, "hello A")
        three.bot(TOKEN_B).user_send(ALICE, "hello B")
        three.bot(TOKEN_C).user_send(ALICE, "hello C")
        await asyncio.wait_for(both.wait(), 5)
        assert got == {"a": [("secret_a", "hello A")], "b": [("secret-b", "hello B")]}
        info_c = (await call(http, TOKEN_C, "getWebhookInfo")).json()["result"]
        assert (info_c["url"], info_c["pending_update_count"]) == ("", 1)  # C polls
        assert (await call(http, TOKEN, "deleteWebhook")).json()["result"] is True
        info_b = (await call(http, TOKEN_B, "getWebhookInfo")).json()["result"]
        assert info_b["url"] == f"{base}/b"
        hooks = await http.get("/_emu/webhook?bot=brand_b_bot")
        assert hooks.json()["info"]["url"] == f"{base}/b"
    finally:
        await runner.cleanup()


async def test_files_belong_to_their_bot(three: Emulator, http: httpx.AsyncClient) -> None:
    """A file id or path bot A gave out means nothing to bot B."""
    doc = three.user_send_file(ALICE, "document", content=b"only for A")["message"]["document"]
    got = (await call(http, TOKEN, "getFile", file_id=doc["file_id"])).json()["result"]
    assert (await http.get(f"/file/bot{TOKEN}/{got['file_path']}")).content == b"only for A"
    other = await call(http, TOKEN_B, "getFile", file_id=doc["file_id"])
    assert other.json()["description"] == "Bad Request: invalid file_id"
    assert (await http.get(f"/file/bot{TOKEN_B}/{got['file_path']}")).status_code == 404
    b_doc = three.bot(TOKEN_B).user_send_file(ALICE, "document", content=b"B")["message"]
    assert b_doc["document"]["file_id"] != doc["file_id"]


async def test_bots_over_the_user_side(three: Emulator, http: httpx.AsyncClient) -> None:
    """GET/POST /_emu/bots list and add bots (never showing a token); bad input is a 4xx."""
    listed = (await http.get("/_emu/bots")).json()
    assert [b["username"] for b in listed] == ["example_gateway_bot", "brand_b_bot", "brand_c_bot"]
    assert TOKEN_B.split(":")[1] not in json.dumps(listed)
    new = "7689012350:BOTEbotEBOTEbotEBOTEbotEBOTEbotE00"
    added = await http.post("/_emu/bots", json={"token": new, "username": "brand_e_bot"})
    assert (added.status_code, added.json()["id"]) == (200, 7689012350)
    again = await http.post("/_emu/bots", json={"token": new})  # the same token: the same bot
    assert again.status_code == 200 and len(three.bots) == 4
    assert (await call(http, new, "getMe")).json()["result"]["username"] == "brand_e_bot"
    for body in [
        {"token": "7689012350:another"},  # an id already served with another token
        {"token": "no-colon"},
        {},
        {"token": "7689012351:x", "limits": 5},
        {"token": "7689012351:x", "colour": "red"},
    ]:
        resp = await http.post("/_emu/bots", json=body)
        assert resp.status_code == 400 and resp.json()["error"], body
    missing = await http.post("/_emu/send?bot=nobody_bot", json={"user_id": 1, "text": "x"})
    assert missing.status_code == 404 and "unknown bot" in missing.json()["error"]


async def test_a_rotated_token_is_401_and_the_new_one_keeps_the_bot(
    three: Emulator, http: httpx.AsyncClient
) -> None:
    """After ``rotate_token`` the old token is 401; the new one is the same bot, state kept."""
    b: EmulatorCore = three.bot(TOKEN_B)
    b.user_send(ALICE, "before")
    resp = await http.post("/_emu/bots/rotate_token?bot=brand_b_bot", json={})
    new = resp.json()["token"]
    assert new.startswith("7689012346:") and new != TOKEN_B
    assert (await call(http, TOKEN_B, "getMe")).status_code == 401
    updates = (await call(http, new, "getUpdates", timeout=0)).json()["result"]
    assert [u["message"]["text"] for u in updates] == ["before"]
    with pytest.raises(ValueError, match="must start with the bot's id"):
        three.rotate_token(7689012346, "1:abc")
    assert three.rotate_token("brand_b_bot", TOKEN_B) == TOKEN_B
    assert (await call(http, TOKEN_B, "getMe")).status_code == 200


async def test_reset_one_bot_or_all(three: Emulator, http: httpx.AsyncClient) -> None:
    """``/_emu/reset?bot=`` forgets one bot's state; ``reset()`` every bot's (bots stay)."""
    b = three.bot(TOKEN_B)
    three.user_send(ALICE, "a")
    b.user_send(ALICE, "b")
    assert (await http.post("/_emu/reset?bot=brand_b_bot")).status_code == 200
    assert (b.state.pending_count(), three.state.pending_count()) == (0, 1)
    b.user_send(ALICE, "b again")
    three.reset()
    assert (b.state.pending_count(), three.state.pending_count()) == (0, 0)
    assert len(three.bots) == 3
