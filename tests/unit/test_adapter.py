"""Update → pipeline message, on every real payload in tests/fixtures."""

from __future__ import annotations

import json

import pytest

from tests.helpers import FIXTURES
from workers.adapter import adapt

BOT = 7689012345


def fixture(name: str) -> dict[str, object]:
    return json.loads((FIXTURES / "updates" / name).read_text())  # type: ignore[no-any-return]


def test_private_text() -> None:
    msg = adapt(fixture("01_private_text_message.json"), BOT)
    assert msg is not None
    assert msg.client_id == "telegram_6123456789"
    assert msg.content == "Hi! Can you check the status of order 4411?"
    assert msg.timestamp == "2025-01-04T12:20:07+00:00"
    assert msg.chat_id == 6123456789 and msg.reply_to == 1287
    assert msg.metadata["username"] == "alice_novak"
    assert msg.metadata["language_code"] == "en"
    assert msg.metadata["update_id"] == 483921734
    assert set(msg.body()) == {"client_id", "content", "timestamp", "metadata"}


def test_photo_caption_and_largest_file_id() -> None:
    msg = adapt(fixture("02_private_photo_with_caption.json"), BOT)
    assert msg is not None
    assert msg.content == "Receipt for order #4411"
    assert msg.metadata["media"]["photo"].endswith("eQADNgQ")


def test_media_only_gives_empty_content() -> None:
    update = fixture("02_private_photo_with_caption.json")
    del update["message"]["caption"]  # type: ignore[index]
    msg = adapt(update, BOT)
    assert msg is not None and msg.content == ""


def test_callback_query_carries_data_and_id() -> None:
    msg = adapt(fixture("03_callback_query.json"), BOT)
    assert msg is not None
    assert msg.update_type == "callback_query"
    assert msg.content == "cancel:4411:yes"
    assert msg.callback_query_id == "2630153772145634412"
    assert msg.chat_id == 6123456789


def test_edited_message_uses_edit_date() -> None:
    msg = adapt(fixture("04_edited_message.json"), BOT)
    assert msg is not None
    assert msg.content.endswith("4412?")
    assert msg.metadata["edited"] is True
    assert msg.timestamp == "2025-01-04T12:21:02+00:00"


def test_group_command_keeps_group_chat() -> None:
    msg = adapt(fixture("05_supergroup_bot_command.json"), BOT)
    assert msg is not None
    assert msg.chat_id == -1002143658709
    assert msg.client_id == "telegram_5987654321"
    assert msg.metadata["chat_type"] == "supergroup"


def test_other_update_types_are_not_forwarded() -> None:
    assert adapt(fixture("06_my_chat_member_bot_blocked.json"), BOT) is None


@pytest.mark.parametrize(
    "update",
    [
        {"update_id": 1},
        {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 1}, "date": 0}},
        {"update_id": 1, "channel_post": {"message_id": 1, "chat": {"id": -100}}},
        {"update_id": 1, "message": {"from": "not-a-dict"}},
    ],
)
def test_odd_updates_do_not_crash(update: dict[str, object]) -> None:
    assert adapt(update, BOT) is None
