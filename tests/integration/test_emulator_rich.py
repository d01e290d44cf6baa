"""The emulator's rich replies over real HTTP, as the Bot API answers them: inline keyboards,
reply_parameters, link_preview_options, editMessageText and deleteMessage."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.testkit.emulator import Emulator
from tests.helpers import FIXTURES, TOKEN

pytestmark = pytest.mark.integration

ALICE = 6123456789
GROUP = -1002143658709
KEYBOARD = {"inline_keyboard": [[{"text": "Yes", "callback_data": "y"}]]}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / "responses" / f"{name}.json").read_text())


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    emulator = Emulator(token=TOKEN)
    await emulator.start()
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


async def sent(http: aiohttp.ClientSession, emu: Emulator, **params: Any) -> dict[str, Any]:
    status, body = await call(http, emu, "sendMessage", chat_id=ALICE, **params)
    assert status == 200, body
    result: dict[str, Any] = body["result"]
    return result


async def test_keyboard_quote_and_preview_options_are_echoed(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    asked = emu.user_send(ALICE, "hi")["message"]["message_id"]
    options = {"is_disabled": True}
    message = await sent(
        http,
        emu,
        text="Sure?",
        reply_markup=KEYBOARD,
        reply_parameters={"message_id": asked},
        link_preview_options=options,
    )
    assert message["reply_markup"] == KEYBOARD
    assert message["reply_to_message"]["message_id"] == asked
    assert message["link_preview_options"] == options
    status, body = await call(
        http, emu, "sendMessage", chat_id=ALICE, text="x", link_preview_options="off"
    )
    assert (status, body["description"]) == (
        400,
        "Bad Request: can't parse link_preview_options JSON object",
    )


@pytest.mark.parametrize(
    ("button", "description"),
    [
        ({"text": "x", "callback_data": "a" * 65}, "Bad Request: BUTTON_DATA_INVALID"),
        ({"text": "x", "callback_data": ""}, "Bad Request: BUTTON_DATA_INVALID"),
        ({"text": "x", "url": "javascript:alert(1)"}, "Bad Request: BUTTON_URL_INVALID"),
        ({"text": "  ", "callback_data": "a"}, "Bad Request: BUTTON_TEXT_INVALID"),
        (
            {"text": "x"},
            "Bad Request: can't parse inline keyboard button: "
            "Text buttons are unallowed in the inline keyboard",
        ),
    ],
)
async def test_bad_buttons_are_refused_as_telegram_does(
    emu: Emulator, http: aiohttp.ClientSession, button: dict[str, str], description: str
) -> None:
    emu.user_send(ALICE, "hi")
    markup = {"inline_keyboard": [[button]]}
    status, body = await call(
        http, emu, "sendMessage", chat_id=ALICE, text="x", reply_markup=markup
    )
    assert (status, body["description"]) == (400, description)
    assert emu.messages(ALICE) == []


async def test_more_than_100_buttons_are_too_long(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    emu.user_send(ALICE, "hi")
    row = [{"text": str(i), "callback_data": str(i)} for i in range(8)]
    markup = {"inline_keyboard": [row] * 12 + [row[:5]]}
    status, body = await call(
        http, emu, "sendMessage", chat_id=ALICE, text="x", reply_markup=markup
    )
    assert (status, body["description"]) == (400, "Bad Request: REPLY_MARKUP_TOO_LONG")


async def test_edit_changes_the_text_and_drops_a_keyboard_it_does_not_repeat(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    emu.user_send(ALICE, "hi")
    message = await sent(http, emu, text="Sure?", reply_markup=KEYBOARD)
    mid = message["message_id"]
    status, body = await call(
        http, emu, "editMessageText", chat_id=ALICE, message_id=mid, text="Done"
    )
    assert status == 200 and body["result"]["text"] == "Done"
    now = emu.message(ALICE, mid)
    assert now is not None and now["text"] == "Done" and "reply_markup" not in now
    assert "edit_date" in now
    assert emu.messages(ALICE)[0]["text"] == "Sure?"  # the send log keeps what was sent


async def test_edit_errors_are_telegrams(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.user_send(ALICE, "hi")
    mid = (await sent(http, emu, text="Same"))["message_id"]
    status, body = await call(
        http, emu, "editMessageText", chat_id=ALICE, message_id=mid, text="Same"
    )
    assert (status, body) == (400, fixture("err_400_message_not_modified"))
    status, body = await call(http, emu, "editMessageText", chat_id=ALICE, message_id=999, text="x")
    assert (status, body) == (400, fixture("err_400_message_to_edit_not_found"))


async def test_delete_removes_the_message_and_a_second_delete_finds_none(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    emu.user_send(ALICE, "hi")
    mid = (await sent(http, emu, text="Oops"))["message_id"]
    assert await call(http, emu, "deleteMessage", chat_id=ALICE, message_id=mid) == (
        200,
        {"ok": True, "result": True},
    )
    assert emu.message(ALICE, mid) is None
    status, body = await call(http, emu, "deleteMessage", chat_id=ALICE, message_id=mid)
    assert (status, body) == (400, fixture("err_400_message_to_delete_not_found"))
    async with http.get(f"{emu.api_url}/_emu/chats/{ALICE}/messages/{mid}") as resp:
        assert resp.status == 404


async def test_what_the_bot_may_not_delete(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A user's message in a group (the bot is no admin) and any message past 48 hours."""
    update = emu.user_send(5987654321, "hello all", chat_id=GROUP, chat_type="supergroup")
    theirs = update["message"]["message_id"]
    status, body = await call(http, emu, "deleteMessage", chat_id=GROUP, message_id=theirs)
    assert (status, body) == (400, fixture("err_400_message_cant_be_deleted"))
    private = emu.user_send(ALICE, "delete me")["message"]["message_id"]
    mine = (await sent(http, emu, text="old"))["message_id"]
    stored = emu.state.get_message(ALICE, mine)
    assert stored is not None
    stored["date"] -= 48 * 3600 + 1
    status, body = await call(http, emu, "deleteMessage", chat_id=ALICE, message_id=mine)
    assert (status, body) == (400, fixture("err_400_message_cant_be_deleted"))
    assert (await call(http, emu, "deleteMessage", chat_id=ALICE, message_id=private))[0] == 200
