"""The worker's direct path skips aiogram only for updates aiogram would route to the
pipeline fallback: a plain message must never be a command the gateway answers itself."""

from __future__ import annotations

import asyncio
import copy
import json
from types import SimpleNamespace
from typing import Any

import pytest
from aiogram import Bot
from aiogram.types import Update, User
from hypothesis import given, settings
from hypothesis import strategies as st

import workers.worker.handler as worker_module
from gateway.core.bots import default_bot
from gateway.runtime.consumer import Ack
from tests.helpers import FIXTURES, TOKEN
from workers.worker.handler import build_dispatcher, plain_message

BOT_USER = User(id=7689012345, is_bot=True, first_name="Gateway", username="gw_bot")


class FakeGateway:
    """What the built-in handlers call on ``gw``, recorded."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.bot = SimpleNamespace(spec=default_bot(TOKEN))  # no texts of its own

    async def reply(self, text: str, **kw: Any) -> str:
        self.calls.append("reply")
        return "r"

    async def send(self, method: str, payload: dict[str, Any], **kw: Any) -> str:
        self.calls.append(method)
        return "r"

    def is_admin(self, user_id: int) -> bool:
        return False

    async def status_text(self, *, detailed: bool) -> str:
        return "ok"


def aiogram_route(update: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    """Where aiogram's dispatcher sends ``update``: 'pipeline', 'gateway' or 'unhandled'."""
    forwarded: list[object] = []

    async def forward(gw: object) -> Ack:
        forwarded.append(gw)
        return Ack()

    monkeypatch.setattr(worker_module, "forward", forward)
    bot = Bot("123456:TEST-token-not-used")
    bot._me = BOT_USER
    gw = FakeGateway()

    async def feed() -> object:
        try:
            parsed = Update.model_validate(update, context={"bot": bot})
            return await build_dispatcher([]).feed_update(bot, parsed, gw=gw)
        finally:
            await bot.session.close()

    asyncio.run(feed())
    if forwarded:
        return "pipeline"
    return "gateway" if gw.calls else "unhandled"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "updates" / name).read_text())  # type: ignore[no-any-return]


def with_text(update: dict[str, Any], text: str | None, caption: str | None = None) -> dict:
    out = copy.deepcopy(update)
    message = out.get("message") or out["edited_message"]
    message.pop("text", None)
    message.pop("entities", None)
    if text is not None:
        message["text"] = text
    if caption is not None:
        message["caption"] = caption
    return out


TEXT = fixture("01_private_text_message.json")
EDIT = fixture("04_edited_message.json")


@pytest.mark.parametrize(
    ("update", "plain"),
    [
        (TEXT, True),
        (fixture("02_private_photo_with_caption.json"), True),
        (EDIT, True),
        (with_text(TEXT, None), True),  # a sticker, a voice note: no text at all
        (with_text(TEXT, "see https://example.com/a/b"), True),
        (with_text(TEXT, "/start"), False),
        (with_text(TEXT, "  /help"), False),  # aiogram splits on whitespace first
        (with_text(TEXT, "\u2003/status"), False),  # unicode whitespace too
        (with_text(TEXT, None, caption="/start"), False),  # a caption can be a command
        (with_text(EDIT, "/start"), False),
        (fixture("05_supergroup_bot_command.json"), False),
        (fixture("03_callback_query.json"), False),
        (fixture("06_my_chat_member_bot_blocked.json"), False),
    ],
)
def test_plain_messages_are_what_aiogram_forwards(
    update: dict[str, Any], plain: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plain_message(update) is plain
    if plain:
        assert aiogram_route(update, monkeypatch) == "pipeline"


def test_commands_stay_with_aiogram(monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("/start", " /help", "/status@gw_bot"):
        update = with_text(TEXT, text)
        assert not plain_message(update)
        assert aiogram_route(update, monkeypatch) == "gateway", text


@pytest.mark.parametrize(
    "broken",
    [
        {"date": None},  # aiogram's Message requires a date
        {"message_id": "12"},
        {"chat": {"id": 1}},  # no chat type
        {"text": 42},
    ],
)
def test_malformed_messages_take_the_validating_path(broken: dict[str, Any]) -> None:
    update = copy.deepcopy(TEXT)
    update["message"].update(broken)
    update["message"] = {k: v for k, v in update["message"].items() if v is not None}
    assert not plain_message(update)


def test_an_update_with_more_than_one_payload_is_not_plain() -> None:
    update = {**copy.deepcopy(TEXT), "edited_message": copy.deepcopy(TEXT["message"])}
    assert not plain_message(update)


@settings(max_examples=150, deadline=None)
@given(
    text=st.one_of(
        st.none(),
        st.text(max_size=30),
        st.builds(
            lambda ws, cmd: ws + "/" + cmd,
            st.text(alphabet=" \t\n\u00a0\u2003\u3000", max_size=3),
            st.sampled_from(["start", "help", "status", "start@gw_bot", "other"]),
        ),
    ),
    caption=st.one_of(st.none(), st.text(max_size=10), st.just("/start")),
    edited=st.booleans(),
)
def test_plain_is_never_a_gateway_command(
    text: str | None, caption: str | None, edited: bool
) -> None:
    update = with_text(EDIT if edited else TEXT, text, caption)
    if not plain_message(update):
        return
    with pytest.MonkeyPatch.context() as mp:
        assert aiogram_route(update, mp) == "pipeline", (text, caption)
