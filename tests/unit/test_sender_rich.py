"""The sender's plan for rich replies (pure): buttons on the last part, edits and deletes
planned from the reply's record."""

from __future__ import annotations

from typing import Any

from gateway.core.contracts import OutboundEntry
from gateway.core.replies import TARGET_FIELD
from workers.sender.parts import plan_parts
from workers.sender.rich import Target, acted_on, parse_record, plan_by_reply, record_value

KEYBOARD = {"inline_keyboard": [[{"text": "Yes", "callback_data": "y"}]]}
REPLY = {"message_id": 5, "allow_sending_without_reply": True}
PREVIEW = {"is_disabled": True}


def entry(method: str, payload: dict[str, Any]) -> OutboundEntry:
    return OutboundEntry(reply_id="r1", bot_id=7, chat_id=42, method=method, payload=payload)


def test_a_long_text_keeps_the_keyboard_for_its_last_part_and_the_quote_for_its_first() -> None:
    text = "\n\n".join(["word " * 500] * 3)  # three parts
    payload = {
        "text": text,
        "reply_markup": KEYBOARD,
        "reply_parameters": REPLY,
        "link_preview_options": PREVIEW,
    }
    parts = plan_parts(entry("sendMessage", payload))
    assert len(parts) == 3
    assert [("reply_markup" in p) for _, p in parts] == [False, False, True]
    assert [("reply_parameters" in p) for _, p in parts] == [True, False, False]
    assert all(p["link_preview_options"] == PREVIEW for _, p in parts)


def test_a_long_caption_moves_the_keyboard_to_its_last_follow_up() -> None:
    payload = {"photo": "https://x/p.jpg", "caption": "c " * 800, "reply_markup": KEYBOARD}
    parts = plan_parts(entry("sendPhoto", payload))
    assert [m for m, _ in parts] == ["sendPhoto", "sendMessage"]
    assert "reply_markup" not in parts[0][1]
    assert parts[-1][1]["reply_markup"] == KEYBOARD
    short = plan_parts(entry("sendPhoto", {"photo": "https://x/p.jpg", "reply_markup": KEYBOARD}))
    assert short == [("sendPhoto", {"photo": "https://x/p.jpg", "reply_markup": KEYBOARD})]


def test_an_edit_of_a_split_reply_edits_its_first_message_and_deletes_the_rest() -> None:
    edit = entry("editMessageText", {TARGET_FIELD: "r0", "text": "new", "reply_markup": KEYBOARD})
    target = Target("k", -100, (11, 12, 13))
    assert plan_by_reply(edit, target) == [
        ("editMessageText", {"text": "new", "reply_markup": KEYBOARD, "message_id": 11}),
        ("deleteMessage", {"message_id": 12}),
        ("deleteMessage", {"message_id": 13}),
    ]


def test_a_delete_removes_every_message_and_a_tombstone_nothing() -> None:
    delete = entry("deleteMessage", {TARGET_FIELD: "r0"})
    assert plan_by_reply(delete, Target("k", 42, (11, 12))) == [
        ("deleteMessage", {"message_id": 11}),
        ("deleteMessage", {"message_id": 12}),
    ]
    assert plan_by_reply(delete, Target("k", 42, (), deleted=True)) == []


def test_records_round_trip_and_garbage_is_unknown() -> None:
    assert parse_record("k", record_value(-100, [1, 2])) == Target("k", -100, (1, 2))
    assert parse_record("k", record_value(42, [], deleted=True)) == Target("k", 42, (), True)
    for raw in (b"1", b"{}", b'{"c": 1, "m": ["x"]}', b"not json", b'{"c": null, "m": []}'):
        assert parse_record("k", raw) is None


def test_a_delete_acted_on_the_message_it_names() -> None:
    assert acted_on("deleteMessage", {"message_id": 12}) == 12
    assert acted_on("editMessageText", {"message_id": 11, "text": "x"}) == 11
    assert acted_on("sendMessage", {"message_id": 3}) is None
