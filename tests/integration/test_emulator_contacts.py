"""The emulator's user side for blocks, reactions and Telegram Business, over real HTTP
(``/_emu/``), and its Bot API answering as Telegram does (driven by aiogram)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramBadRequest, TelegramForbiddenError
from aiogram.types import Update

from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_USERNAME, FIXTURES, TOKEN

pytestmark = pytest.mark.integration

ALICE = 6123456789
BOGDAN = 5987654321


def shape(value: Any) -> Any:
    """The keys of an object, all the way down (values left out)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    return type(value).__name__


@pytest.fixture
async def bot(emu: Emulator) -> AsyncIterator[Bot]:
    client = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(emu.api_url)))
    yield client
    await client.session.close()


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=emu.api_url) as session:
        yield session


async def user(http: aiohttp.ClientSession, path: str, **body: Any) -> tuple[int, Any]:
    async with http.post(f"/_emu/{path}", json=body) as resp:
        return resp.status, await resp.json()


async def polled(bot: Bot, allowed: list[str] | None = None) -> list[Update]:
    updates = await bot.get_updates(timeout=0, allowed_updates=allowed)
    if updates:
        await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0)
    return updates


async def test_a_block_is_shaped_like_telegrams_and_the_chat_answers_403_until_unblocked(
    emu: Emulator, bot: Bot, http: aiohttp.ClientSession
) -> None:
    recorded = json.loads((FIXTURES / "updates" / "06_my_chat_member_bot_blocked.json").read_text())
    emu.user_send(ALICE, "hi", first_name="Alice", last_name="Novak", username="alice_novak")
    status, blocked = await user(http, "block", user_id=ALICE)
    assert status == 200
    assert shape(blocked["my_chat_member"]) == shape(recorded["my_chat_member"])
    assert blocked["my_chat_member"]["new_chat_member"]["user"]["username"] == BOT_USERNAME
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(ALICE, "anyone there?")
    assert (await user(http, "block", user_id=ALICE))[0] == 400  # blocked already
    status, unblocked = await user(http, "unblock", user_id=ALICE)
    member = unblocked["my_chat_member"]
    assert (member["old_chat_member"]["status"], member["new_chat_member"]["status"]) == (
        "kicked",
        "member",
    )
    await bot.send_message(ALICE, "welcome back")
    kinds = [u.event_type for u in await polled(bot)]  # aiogram's models take them
    assert kinds == ["message", "my_chat_member", "my_chat_member"]


async def test_a_reaction_is_delivered_only_to_a_bot_that_asks(
    emu: Emulator, bot: Bot, http: aiohttp.ClientSession
) -> None:
    emu.add_chat(ALICE)
    sent = await bot.send_message(ALICE, "rate us")
    status, first = await user(
        http, "react", user_id=ALICE, chat_id=ALICE, message_id=sent.message_id, emoji=["👍"]
    )
    assert status == 200 and first["message_reaction"]["old_reaction"] == []
    assert await polled(bot, ["message", "my_chat_member"]) == []  # dropped, as Telegram does
    emu.user_react(ALICE, ALICE, sent.message_id, ["🔥"])
    [update] = await polled(bot, ["message_reaction"])
    reaction = update.message_reaction
    assert reaction is not None and reaction.message_id == sent.message_id
    assert [r.emoji for r in reaction.new_reaction] == ["🔥"]  # type: ignore[union-attr]
    assert [r.emoji for r in reaction.old_reaction] == ["👍"]  # type: ignore[union-attr]
    status, _ = await user(http, "react", user_id=ALICE, chat_id=ALICE, message_id=999, emoji=[])
    assert status == 400  # no such message


async def test_business_chats_are_reached_only_through_their_enabled_connection(
    emu: Emulator, bot: Bot, http: aiohttp.ClientSession
) -> None:
    status, connected = await user(http, "business/connect", user_id=BOGDAN)
    connection = connected["business_connection"]["id"]
    assert status == 200 and connected["business_connection"]["user_chat_id"] == BOGDAN
    status, asked = await user(
        http, "business/send", connection_id=connection, customer_id=ALICE, text="In stock?"
    )
    message_id = asked["business_message"]["message_id"]
    assert asked["business_message"]["business_connection_id"] == connection
    with pytest.raises(TelegramBadRequest, match="BUSINESS_CONNECTION_INVALID"):
        await bot.send_message(ALICE, "x", business_connection_id="nope")
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(ALICE, "x")  # the customer never wrote to the bot itself
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(424242, "x", business_connection_id=connection)
    reply = await bot.send_message(
        ALICE, "Yes!", business_connection_id=connection, reply_to_message_id=message_id
    )
    assert reply.business_connection_id == connection
    assert reply.from_user is not None and reply.from_user.id == BOGDAN
    assert reply.reply_to_message is not None and reply.reply_to_message.message_id == message_id
    await bot.send_chat_action(ALICE, "typing", business_connection_id=connection)
    assert emu.chat_actions(ALICE) == ["typing"]
    info = await bot.get_business_connection(connection)
    assert info.user.id == BOGDAN and info.is_enabled
    await user(http, "business/connect", user_id=BOGDAN, connection_id=connection, enabled=False)
    with pytest.raises(TelegramBadRequest, match="BUSINESS_CONNECTION_NOT_ALLOWED"):
        await bot.send_message(ALICE, "x", business_connection_id=connection)
    status, _ = await user(
        http, "business/send", connection_id=connection, customer_id=ALICE, text="hello?"
    )
    assert status == 400  # a disabled connection brings no messages
    kinds = [u.event_type for u in await polled(bot, ["business_connection", "business_message"])]
    assert kinds == ["business_connection", "business_message", "business_connection"]
