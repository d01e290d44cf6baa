"""The Telegram emulator over real HTTP on 127.0.0.1, driven by aiogram and by raw requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup
from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.testkit.emulator import Emulator, EmulatorLimits

pytestmark = pytest.mark.integration

TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"
from tests.helpers import FIXTURES, free_port  # noqa: E402 - the repo copy of shared/fixtures

ALICE = 6123456789


def fixture(name: str) -> Any:
    path = FIXTURES / name
    return json.loads(path.read_text())


async def until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``predicate`` until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (result := predicate()):
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return result


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    emulator = Emulator(token=TOKEN, bot_username="example_gateway_bot", webhook_retry_delay=0.02)
    await emulator.start()
    yield emulator
    await emulator.stop()


@pytest.fixture
async def bot(emu: Emulator) -> AsyncIterator[Bot]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(emu.api_url))
    client = Bot(TOKEN, session=session)
    yield client
    await client.session.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, emu: Emulator, method: str, token: str = TOKEN, **params: Any
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with http.post(f"{emu.api_url}/bot{token}/{method}", json=params) as resp:
        return resp.status, await resp.json(), resp.headers


# --- basics ----------------------------------------------------------------------------------


async def test_get_me(emu: Emulator, bot: Bot, http: aiohttp.ClientSession) -> None:
    me = await bot.get_me()
    assert (me.id, me.is_bot, me.username) == (7689012345, True, "example_gateway_bot")
    status, body, _ = await call(http, emu, "GETME")  # method names are case-insensitive
    assert status == 200
    assert body == {
        "ok": True,
        "result": {
            "id": 7689012345,
            "is_bot": True,
            "first_name": "Example Gateway",
            "username": "example_gateway_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        },
    }


async def test_wrong_token_and_unknown_method(
    emu: Emulator, bot: Bot, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(http, emu, "getMe", token="1:wrong")
    assert (status, body) == (401, fixture("responses/err_401_unauthorized.json"))
    status, body, _ = await call(http, emu, "sendMagic")
    assert status == 404
    assert body == {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
    emu.faults.unauthorized(True)
    with pytest.raises(TelegramUnauthorizedError):
        await bot.get_me()


async def test_user_message_reaches_get_updates_in_fixture_shape(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    expected = fixture("responses/ok_getUpdates.json")
    text = expected["result"][0]["message"]["text"]
    emu.user_send(ALICE, text, first_name="Alice", last_name="Novak", username="alice_novak")
    status, body, _ = await call(http, emu, "getUpdates")
    assert status == 200
    update = body["result"][0]
    want = expected["result"][0]
    assert update.keys() == want.keys()
    assert update["message"].keys() == want["message"].keys()
    for key in ("from", "chat", "text"):
        assert update["message"][key] == want["message"][key]


async def test_offset_confirms_updates_for_good(emu: Emulator, bot: Bot) -> None:
    emu.user_send(1, "a")
    emu.user_send(1, "b")
    updates = await bot.get_updates()
    assert [u.message.text for u in updates if u.message] == ["a", "b"]
    assert await bot.get_updates(offset=updates[0].update_id + 1) != []
    assert [u.update_id for u in await bot.get_updates()] == [updates[1].update_id]
    assert await bot.get_updates(offset=updates[1].update_id + 1) == []
    assert await bot.get_updates() == []  # dropped forever


async def test_long_poll_returns_as_soon_as_an_update_arrives(emu: Emulator, bot: Bot) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    poll = asyncio.create_task(bot.get_updates(timeout=30))
    await until(lambda: emu.stats()["requests"].get("getUpdates") == 1)
    assert not poll.done()
    emu.user_send(7, "wake up")
    updates = await asyncio.wait_for(poll, 5)
    assert [u.message.text for u in updates if u.message] == ["wake up"]
    assert loop.time() - started < 5


async def test_second_get_updates_terminates_the_first(
    emu: Emulator, bot: Bot, http: aiohttp.ClientSession
) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=30))
    await until(lambda: emu.stats()["requests"].get("getUpdates") == 1)
    status, body, _ = await call(http, emu, "getUpdates", timeout=0)
    assert (status, body) == (200, {"ok": True, "result": []})
    with pytest.raises(TelegramConflictError) as caught:
        await asyncio.wait_for(first, 5)
    assert (
        caught.value.message == fixture("responses/err_409_conflict_getupdates.json")["description"]
    )


# --- webhook ---------------------------------------------------------------------------------


async def test_get_updates_conflicts_with_webhook(
    emu: Emulator, bot: Bot, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(http, emu, "getWebhookInfo")
    assert body["result"] == {"url": "", "has_custom_certificate": False, "pending_update_count": 0}
    assert await bot.set_webhook("http://127.0.0.1:9/hook", max_connections=7)
    status, body, _ = await call(http, emu, "getUpdates")
    assert (status, body) == (409, fixture("responses/err_409_webhook_active.json"))
    status, body, _ = await call(http, emu, "setWebhook", url="http://x/", secret_token="bad token")
    assert (status, body["description"]) == (
        400,
        "Bad Request: secret token contains unallowed characters",
    )
    assert await bot.delete_webhook()
    assert await bot.get_updates() == []


async def test_webhook_delivery_with_secret_retries_and_keeps_chat_order(
    emu: Emulator, bot: Bot
) -> None:
    received: list[tuple[int, int, str | None, int]] = []  # chat, update_id, secret, status
    fail_once = {"first": True}

    async def hook(request: web.Request) -> web.Response:
        update = await request.json()
        chat = update["message"]["chat"]["id"]
        status = 200
        if chat == 10 and fail_once["first"]:
            fail_once["first"] = False
            status = 502
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
        received.append((chat, update["update_id"], secret, status))
        assert request.content_type == "application/json"
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        a = [emu.user_send(10, f"a{i}")["update_id"] for i in range(3)]
        b = [emu.user_send(20, f"b{i}")["update_id"] for i in range(2)]
        await bot.set_webhook(f"http://127.0.0.1:{port}/hook", secret_token="s3cr3t_-")
        await until(lambda: emu.webhook_info()["pending_update_count"] == 0)
    finally:
        await runner.cleanup()
    assert {secret for _, _, secret, _ in received} == {"s3cr3t_-"}
    chat_a = [(uid, status) for chat, uid, _, status in received if chat == 10]
    assert chat_a == [(a[0], 502), (a[0], 200), (a[1], 200), (a[2], 200)]
    assert [uid for chat, uid, _, _ in received if chat == 20] == b
    assert emu.delivery_attempts() == {a[0]: 2, a[1]: 1, a[2]: 1, b[0]: 1, b[1]: 1}
    info = await bot.get_webhook_info()
    assert info.last_error_message == "Wrong response from the webhook: 502 Bad Gateway"
    assert info.pending_update_count == 0


async def test_webhook_connection_refused_is_recorded_and_retried(emu: Emulator) -> None:
    port = free_port()  # reserved by this process, bound by nobody
    update_id = emu.user_send(1, "x")["update_id"]
    emu.state.set_webhook(f"http://127.0.0.1:{port}/", None, 40, None)
    await until(lambda: emu.delivery_attempts().get(update_id, 0) >= 3)
    info = emu.webhook_info()
    assert info["last_error_message"] == "Connection refused"
    assert info["pending_update_count"] == 1


# --- sending ---------------------------------------------------------------------------------


async def test_send_message_from_aiogram_is_recorded(emu: Emulator, bot: Bot) -> None:
    emu.user_send(ALICE, "hi")
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Yes", callback_data="cancel:yes")]]
    )
    sent = await bot.send_message(
        ALICE, "<b>Cancel</b> order?", parse_mode="HTML", reply_markup=keyboard
    )
    assert sent.text == "Cancel order?"
    assert sent.from_user is not None
    assert sent.from_user.id == 7689012345
    messages = await emu.wait_messages(ALICE, 1, timeout=5)
    assert messages[0]["message_id"] == sent.message_id == 2  # after the user's message 1
    assert messages[0]["entities"] == [{"offset": 0, "length": 6, "type": "bold"}]
    assert messages[0]["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "cancel:yes"
    entry = emu.sent()[0]
    assert (entry["method"], entry["chat_id"]) == ("sendMessage", ALICE)
    assert isinstance(entry["ts"], float)
    with pytest.raises(TimeoutError):
        await emu.wait_messages(ALICE, 2, timeout=0.05)


async def test_wait_messages_resolves_on_a_later_send(emu: Emulator, bot: Bot) -> None:
    emu.add_chat(-100123, "supergroup", "Ops")
    waiter = asyncio.create_task(emu.wait_messages(-100123, 2, timeout=5))
    await bot.send_message(-100123, "one")
    await bot.send_message(-100123, "two")
    assert [m["text"] for m in await waiter] == ["one", "two"]


@pytest.mark.parametrize(
    ("chat", "text", "parse_mode", "fixture_name", "description"),
    [
        (ALICE, "x" * 4097, None, "responses/err_400_message_too_long.json", None),
        (ALICE, "😀" * 2049, None, "responses/err_400_message_too_long.json", None),
        (ALICE, "", None, None, "Bad Request: message text is empty"),
        (ALICE, "<b></b>", "HTML", None, "Bad Request: message text is empty"),
        (424242, "hi", None, "responses/err_400_chat_not_found.json", None),
        (ALICE, "Hello world <b>x", "HTML", "responses/err_400_cant_parse_entities.json", None),
    ],
)
async def test_send_message_bad_requests(
    emu: Emulator,
    bot: Bot,
    chat: int,
    text: str,
    parse_mode: str | None,
    fixture_name: str | None,
    description: str | None,
) -> None:
    emu.user_send(ALICE, "hi")
    expected = fixture(fixture_name)["description"] if fixture_name else description
    with pytest.raises(TelegramBadRequest) as caught:
        await bot.send_message(chat, text, parse_mode=parse_mode)
    assert caught.value.message == expected
    assert emu.messages(chat) == []


async def test_text_length_is_counted_after_html_parsing(emu: Emulator, bot: Bot) -> None:
    emu.user_send(ALICE, "hi")
    body = "&lt;" * 4096  # 16384 characters of markup, 4096 after unescaping
    sent = await bot.send_message(ALICE, f"<i>{body}</i>", parse_mode="HTML")
    assert sent.text == "<" * 4096


async def test_forbidden_flood_and_migrate_faults(
    emu: Emulator, bot: Bot, http: aiohttp.ClientSession
) -> None:
    emu.user_send(ALICE, "hi")
    emu.faults.forbid_chat(ALICE)
    with pytest.raises(TelegramForbiddenError) as forbidden:
        await bot.send_message(ALICE, "x")
    assert forbidden.value.message == "Forbidden: bot was blocked by the user"
    emu.faults.unforbid_chat(ALICE)

    emu.faults.flood_chat(ALICE, retry_after=35)
    status, body, headers = await call(http, emu, "sendMessage", chat_id=ALICE, text="x")
    assert (status, body) == (429, fixture("responses/err_429_retry_after.json"))
    assert headers["Retry-After"] == "35"
    emu.faults.flood_chat(ALICE, retry_after=7)
    with pytest.raises(TelegramRetryAfter) as flood:
        await bot.send_message(ALICE, "x")
    assert flood.value.retry_after == 7
    await bot.send_message(ALICE, "ok")  # the injected floods are used up

    emu.add_chat(-4000000001, "group", "Ops Team")
    emu.faults.migrate_chat(-4000000001, -1002143658709)
    status, body, _ = await call(http, emu, "sendMessage", chat_id=-4000000001, text="x")
    assert (status, body) == (400, fixture("responses/err_400_migrated.json"))
    with pytest.raises(TelegramMigrateToChat) as moved:
        await bot.send_message(-4000000001, "x")
    assert moved.value.migrate_to_chat_id == -1002143658709
    await bot.send_message(-1002143658709, "x")  # the new supergroup is known
    assert len(emu.messages(ALICE)) == 1
    assert len(emu.messages(-1002143658709)) == 1
    assert emu.stats()["faults_429"] == 2


async def test_injected_5xx_bodies(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.faults.fail_next("getMe", 1)
    async with http.post(f"{emu.api_url}/bot{TOKEN}/getMe") as resp:
        assert resp.status == 502
        assert resp.content_type == "text/html"
        text = await resp.text()
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    emu.faults.fail_next(None, 1, status=500, html=False)
    status, body, _ = await call(http, emu, "getMe")
    assert (status, body) == (
        500,
        {"ok": False, "error_code": 500, "description": "Internal Server Error"},
    )
    status, _, _ = await call(http, emu, "getMe")
    assert status == 200


async def test_parameters_in_every_encoding(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.user_send(5, "hi")
    url = f"{emu.api_url}/bot{TOKEN}/sendMessage"
    async with http.get(url, params={"chat_id": "5", "text": "query"}) as resp:
        assert (await resp.json())["result"]["text"] == "query"
    async with http.post(url, data={"chat_id": "5", "text": "form"}) as resp:
        assert (await resp.json())["result"]["text"] == "form"
    form = aiohttp.FormData()
    form.add_field("chat_id", "5")
    form.add_field("text", "multi")
    form.add_field("reply_parameters", '{"message_id": 1}')
    async with http.post(url, data=form) as resp:
        result = (await resp.json())["result"]
    assert result["reply_to_message"]["text"] == "hi"
    assert [m["text"] for m in emu.messages(5)] == ["query", "form", "multi"]


async def test_photo_document_and_caption(emu: Emulator, bot: Bot) -> None:
    emu.user_send(ALICE, "hi")
    photo = await bot.send_photo(
        ALICE, "https://example.com/a.jpg", caption="<i>look</i>", parse_mode="HTML"
    )
    assert photo.photo
    assert photo.caption == "look"
    upload = BufferedInputFile(b"%PDF-1.4 fake", filename="report.pdf")
    document = await bot.send_document(ALICE, upload, caption="report")
    assert document.document is not None
    assert (document.document.file_name, document.document.file_size) == ("report.pdf", 13)
    with pytest.raises(TelegramBadRequest) as caught:
        await bot.send_photo(ALICE, "AgACAgIAAxkBAA", caption="c" * 1025)
    assert caught.value.message == "Bad Request: message caption is too long"
    assert [e["method"] for e in emu.sent()] == ["sendPhoto", "sendDocument"]


async def test_callback_query_round_trip(emu: Emulator, bot: Bot) -> None:
    emu.user_send(ALICE, "hi")
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="Yes", callback_data="yes")]]
    )
    sent = await bot.send_message(ALICE, "Sure?", reply_markup=keyboard)
    await bot.send_chat_action(ALICE, "typing")
    update = emu.user_press(ALICE, ALICE, sent.message_id, "yes")
    updates = await bot.get_updates(offset=update["update_id"])
    query = updates[0].callback_query
    assert query is not None
    assert query.data == "yes"
    assert query.id.isdigit()
    assert query.message is not None
    assert query.message.message_id == sent.message_id
    assert await bot.answer_callback_query(query.id, text="Done")
    with pytest.raises(TelegramBadRequest, match="query is too old"):
        await bot.answer_callback_query(query.id)
    assert emu.callback_answers()[0]["text"] == "Done"
    assert emu.chat_actions(ALICE) == ["typing"]
    edited = await bot.edit_message_text("Done", chat_id=ALICE, message_id=sent.message_id)
    assert not isinstance(edited, bool)
    assert edited.edit_date is not None
    assert emu.stats()["sent"] == 1  # actions, answers and edits are not sends


# --- rate limits -----------------------------------------------------------------------------


async def test_limits_reject_with_real_429s(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    emulator = Emulator(token=TOKEN, limits=EmulatorLimits(), clock=clock)
    await emulator.start()
    try:
        for chat in range(1, 42):
            emulator.add_chat(chat)
        results = [
            await call(http, emulator, "sendMessage", chat_id=chat, text="x")
            for chat in range(1, 41)
        ]
        assert [status for status, _, _ in results] == [200] * 30 + [429] * 10
        _, body, headers = results[-1]
        assert body["parameters"] == {"retry_after": 1}
        assert body["description"] == "Too Many Requests: retry after 1"
        assert headers["Retry-After"] == "1"
        status, _, _ = await call(http, emulator, "sendChatAction", chat_id=41, action="typing")
        assert status == 200  # actions do not count against limits
        clock.now += 1.0
        status, _, _ = await call(http, emulator, "sendMessage", chat_id=41, text="x")
        assert status == 200
        stats = emulator.stats()
        assert (stats["sent"], stats["rejected_429"], stats["max_global_1s"]) == (31, 10, 30)
        assert stats["requests"] == {"sendMessage": 41, "sendChatAction": 1}
    finally:
        await emulator.stop()


# --- the user-side HTTP API ------------------------------------------------------------------


async def test_user_side_http_api(emu: Emulator, bot: Bot, http: aiohttp.ClientSession) -> None:
    base = f"{emu.api_url}/_emu"
    async with http.post(f"{base}/send", json={"user_id": 77, "text": "/start"}) as resp:
        update = await resp.json()
    assert update["message"]["entities"] == [{"offset": 0, "length": 6, "type": "bot_command"}]
    waiting = asyncio.create_task(http.get(f"{base}/chats/77/messages?wait=1&timeout=5"))
    await bot.send_message(77, "welcome")
    async with await waiting as resp:
        assert [m["text"] for m in await resp.json()] == ["welcome"]
    async with http.post(f"{base}/faults", json={"op": "forbid_chat", "chat_id": 77}) as resp:
        assert resp.status == 200
    with pytest.raises(TelegramForbiddenError):
        await bot.send_message(77, "x")
    async with http.delete(f"{base}/faults") as resp:
        assert resp.status == 200
    await bot.send_message(77, "again")
    async with http.post(f"{base}/faults", json={"op": "drop_database"}) as resp:
        assert resp.status == 400
    async with http.get(f"{base}/stats") as resp:
        stats = await resp.json()
    assert stats["sent"] == 2
    assert stats["max_chat_1s"] == {"77": 2}
    async with http.get(f"{base}/chats/77/messages?wait=9&timeout=0.05") as resp:
        assert resp.status == 408
    async with http.post(f"{base}/reset") as resp:
        assert resp.status == 200
    assert emu.sent() == []
    assert emu.state.chats == {}
