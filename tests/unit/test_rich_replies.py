"""Rich reply bodies (pure): buttons, reply_to, link previews, edits and deletes by reply id."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.errors import ReplyShapeError
from gateway.core.markup import MAX_BUTTONS, MAX_ROW_BUTTONS, url_problem
from gateway.core.replies import (
    TARGET_FIELD,
    Delete,
    Edit,
    NoReplyContent,
    Reply,
    parse_reply,
    reply_entries,
)
from gateway.core.tokens import Route

FIELDS = ["content", "response", "text", "message"]
ROUTE = Route(bot_id=7, chat_id=42, reply_to=1287, update_id=99, expires_at=0)
YES = {"text": "Yes", "callback_data": "order:yes"}
SITE = {"text": "Site", "url": "https://example.com/help"}
FILE_ID = "AgACAgIAAxkBAAIFCGd5Qk7rP0a1VbX3c9Yt2mWqLz8hAALm4jEbR3rIS0pQm2fA1sG9AQADAgADeQADNgQ"


def entries(body: dict[str, Any]) -> list[Any]:
    return reply_entries(ROUTE, parse_reply(body, FIELDS), origin="pipeline", ttl=60, now=1.0)


def test_buttons_become_the_text_messages_inline_keyboard() -> None:
    [entry] = entries(
        {"content": "Pay?", "buttons": [[YES, SITE], [{"text": "No", "callback_data": "n"}]]}
    )
    markup = entry.payload["reply_markup"]
    assert markup == {"inline_keyboard": [[YES, SITE], [{"text": "No", "callback_data": "n"}]]}
    assert entry.payload["reply_parameters"]["message_id"] == 1287  # still threaded


def test_without_text_the_buttons_go_on_the_last_attachment() -> None:
    photo = {"type": "photo", "file_id": FILE_ID}
    body = {"attachments": [photo, "https://x/a.pdf"], "buttons": [[YES]]}
    first, last = entries(body)
    assert "reply_markup" not in first.payload
    assert last.payload["reply_markup"] == {"inline_keyboard": [[YES]]}


def test_an_empty_keyboard_is_no_keyboard() -> None:
    [entry] = entries({"content": "Hi", "buttons": []})
    assert "reply_markup" not in entry.payload


def test_buttons_alone_are_refused_not_taken_for_a_later_reply() -> None:
    with pytest.raises(ReplyShapeError, match="buttons need") as info:
        parse_reply({"buttons": [[YES]]}, FIELDS)
    assert not isinstance(info.value, NoReplyContent)


def _row(n: int) -> list[dict[str, str]]:
    return [{"text": f"b{i}", "callback_data": f"d{i}"} for i in range(n)]


@pytest.mark.parametrize(
    ("buttons", "reason"),
    [
        ({"text": "x"}, "list of rows"),
        ([YES], "list of rows"),
        ([[]], "row 1 is empty"),
        ([["Yes"]], "must be an object"),
        ([[{"text": "", "callback_data": "x"}]], "non-empty 'text'"),
        ([[{"text": "   ", "callback_data": "x"}]], "non-empty 'text'"),
        ([[{"text": "x" * 129, "callback_data": "x"}]], "longer than 128"),
        ([[{"text": "x"}]], "exactly one of"),
        ([[{"text": "x", "callback_data": "a", "url": "https://x"}]], "exactly one of"),
        ([[{"text": "x", "callback_data": ""}]], "1-64 bytes"),
        ([[{"text": "x", "callback_data": "a" * 65}]], "1-64 bytes"),
        ([[{"text": "x", "callback_data": "é" * 33}]], "1-64 bytes"),  # 66 bytes of UTF-8
        ([[{"text": "x", "callback_data": 5}]], "1-64 bytes"),
        ([[{"text": "x", "url": "javascript:alert(1)"}]], "http://, https:// or tg://"),
        ([[{"text": "x", "url": "JavaScript://%0aalert(1)"}]], "http://, https:// or tg://"),
        ([[{"text": "x", "url": "file:///etc/passwd"}]], "http://, https:// or tg://"),
        ([[{"text": "x", "url": "data:text/html,hi"}]], "http://, https:// or tg://"),
        ([[{"text": "x", "url": "https://"}]], "has no host"),
        ([[{"text": "x", "url": "https://x/ y"}]], "whitespace"),
        ([[{"text": "x", "url": "https://x:port/"}]], "not a valid URL"),
        ([[{"text": "x", "url": "https://" + "a" * 2050}]], "longer than 2048"),
        ([[{"text": "x", "web_app": {"url": "https://x"}}]], "unsupported fields: web_app"),
        ([_row(MAX_ROW_BUTTONS + 1)], f"at most {MAX_ROW_BUTTONS} buttons per row"),
        ([_row(8)] * 12 + [_row(5)], f"at most {MAX_BUTTONS} buttons"),
    ],
)
def test_hostile_buttons_say_why(buttons: object, reason: str) -> None:
    with pytest.raises(ReplyShapeError, match=reason):
        parse_reply({"content": "x", "buttons": buttons}, FIELDS)


def test_the_largest_keyboard_telegram_takes_is_accepted() -> None:
    body = {"content": "x", "buttons": [_row(8)] * 12 + [_row(4)]}  # 100 buttons
    [entry] = entries(body)
    assert sum(len(r) for r in entry.payload["reply_markup"]["inline_keyboard"]) == 100
    [tg] = entries({"content": "x", "buttons": [[{"text": "me", "url": "tg://user?id=1"}]]})
    assert tg.payload["reply_markup"]["inline_keyboard"][0][0]["url"] == "tg://user?id=1"
    [big] = entries({"content": "x", "buttons": [[{"text": "x", "callback_data": "a" * 64}]]})
    assert big.payload["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "a" * 64


@pytest.mark.parametrize(
    "url", ["https://example.com", "http://a.b/c?d=e", "tg://resolve?domain=x"]
)
def test_good_urls_pass(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(
    ("reply_to", "expected"),
    [(True, 1287), (None, None), (False, None), (7, 7), (7.0, 7)],  # 7.0: JSON's number 7
)
def test_reply_to_threads_the_text(reply_to: object, expected: int | None) -> None:
    body: dict[str, Any] = {"content": "Hi"}
    if reply_to is not None or expected is None:
        body["reply_to"] = reply_to
    [entry] = entries(body)
    params = entry.payload.get("reply_parameters")
    if expected is None:
        assert params is None
    else:
        assert params == {"message_id": expected, "allow_sending_without_reply": True}


def test_reply_to_absent_keeps_todays_threading() -> None:
    [entry] = entries({"content": "Hi"})
    assert entry.payload["reply_parameters"]["message_id"] == 1287


@pytest.mark.parametrize("bad", ["yes", "12", 0, -5, 1.5, 0.0, [1], 2**31, float(2**31)])
def test_reply_to_must_be_a_flag_or_a_message_id(bad: object) -> None:
    with pytest.raises(ReplyShapeError, match="reply_to"):
        parse_reply({"content": "x", "reply_to": bad}, FIELDS)


def test_link_preview_options_pass_through() -> None:
    options = {"is_disabled": False, "url": "https://x/p", "prefer_small_media": True}
    [entry] = entries({"content": "see https://x/p", "link_preview_options": options})
    assert entry.payload["link_preview_options"] == options


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ("off", "must be an object"),
        ({"disabled": True}, "unsupported fields: disabled"),
        ({"is_disabled": "yes"}, "true or false"),
        ({"prefer_small_media": True, "prefer_large_media": True}, "prefer_small_media or"),
        ({"url": "javascript:x"}, "url"),
        ({"url": "tg://resolve?domain=x"}, "http"),
    ],
)
def test_bad_link_preview_options_say_why(options: object, reason: str) -> None:
    with pytest.raises(ReplyShapeError, match=reason):
        parse_reply({"content": "x", "link_preview_options": options}, FIELDS)


def test_an_edit_names_its_target_and_carries_the_new_text_and_keyboard() -> None:
    body = {"edit": "u98-0-abc", "content": "<b>Done</b>", "parse_mode": "HTML", "buttons": [[YES]]}
    parsed = parse_reply(body, FIELDS)
    assert isinstance(parsed, Edit) and parsed.reply_id == "u98-0-abc"
    [entry] = entries(body)
    assert entry.method == "editMessageText"
    assert entry.payload == {
        TARGET_FIELD: "u98-0-abc",
        "text": "<b>Done</b>",
        "parse_mode": "HTML",
        "reply_markup": {"inline_keyboard": [[YES]]},
    }
    assert entry.chat_id == 42 and entry.update_id == 99


def test_a_delete_names_its_target_only() -> None:
    assert parse_reply({"delete": "u98-0-abc"}, FIELDS) == Delete("u98-0-abc")
    [entry] = entries({"delete": "u98-0-abc"})
    assert (entry.method, entry.payload) == ("deleteMessage", {TARGET_FIELD: "u98-0-abc"})


def test_the_same_edit_twice_has_one_reply_id_and_another_edit_another() -> None:
    a = entries({"edit": "r1", "content": "x"})[0].reply_id
    assert a == entries({"edit": "r1", "content": "x"})[0].reply_id
    assert a != entries({"edit": "r1", "content": "y"})[0].reply_id
    assert a != entries({"edit": "r2", "content": "x"})[0].reply_id
    assert entries({"delete": "r1"})[0].reply_id != entries({"delete": "r2"})[0].reply_id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"edit": "r1"}, "an edit needs the new text"),
        ({"edit": "r1", "content": "  "}, "an edit needs the new text"),
        ({"edit": "", "content": "x"}, "reply_id the callback answered with"),
        ({"edit": 5, "content": "x"}, "reply_id the callback answered with"),
        ({"edit": "a b", "content": "x"}, "reply_id the callback answered with"),
        ({"edit": "a{1}", "content": "x"}, "reply_id the callback answered with"),
        ({"edit": "é", "content": "x"}, "reply_id the callback answered with"),
        ({"edit": "r" * 129, "content": "x"}, "reply_id the callback answered with"),
        ({"edit": "r1", "content": "x", "attachments": ["https://x/a.pdf"]}, "attachments"),
        ({"edit": "r1", "content": "x", "reply_to": 5}, "reply_to"),
        ({"edit": "r1", "delete": "r2", "content": "x"}, "one of edit, delete"),
        ({"delete": "r1", "content": "x"}, "takes no text"),
        ({"delete": "r1", "buttons": [[YES]]}, "buttons"),
        (
            {"edit": "r1", "content": "x", "buttons": [[{"text": "x", "callback_data": "a" * 65}]]},
            "1-64",
        ),
    ],
)
def test_bad_edits_and_deletes_say_why(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(ReplyShapeError, match=reason) as info:
        parse_reply(body, FIELDS)
    assert not isinstance(info.value, NoReplyContent)


def test_a_plain_reply_is_still_a_reply() -> None:
    parsed = parse_reply({"content": "Hello", "edit": None}, FIELDS)
    assert isinstance(parsed, Reply) and parsed.text == "Hello"
