"""Pipeline reply shapes → outbound entries."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from gateway.core.contracts import OutboundEntry
from gateway.core.errors import ReplyShapeError
from gateway.core.replies import MAX_NESTING, NoReplyContent, parse_reply, reply_entries
from gateway.core.tokens import Route

FIELDS = ["content", "response", "text", "message"]
ROUTE = Route(bot_id=7, chat_id=42, reply_to=1287, update_id=99, expires_at=0)
FILE_ID = "AgACAgIAAxkBAAIFCGd5Qk7rP0a1VbX3c9Yt2mWqLz8hAALm4jEbR3rIS0pQm2fA1sG9AQADAgADeQADNgQ"


@pytest.mark.parametrize(
    "body",
    [
        {"content": "Hello"},
        {"response": "Hello"},
        {"text": "Hello"},
        {"message": "Hello"},
        {"message": {"text": "Hello"}},
        {"content": "", "response": "Hello"},
        {"status": "done", "content": "Hello", "escalated": True},
    ],
)
def test_common_shapes_give_the_text(body: dict[str, object]) -> None:
    assert parse_reply(body, FIELDS).text == "Hello"


def test_field_mapping_is_configurable() -> None:
    assert parse_reply({"answer": "Hi", "content": "no"}, ["answer"]).text == "Hi"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "JSON object"),
        ("hello", "JSON object"),
        ({}, "no reply text"),
        ({"content": "   "}, "no reply text"),
        ({"content": 5}, "no reply text"),
        ({"content": "x", "attachments": "nope"}, "list"),
        ({"attachments": [{"type": "video", "url": "https://x/y"}]}, "not supported"),
        ({"attachments": [{"type": "photo"}]}, "url"),
        ({"content": "x", "parse_mode": "BBCode"}, "parse_mode"),
    ],
)
def test_bad_bodies_say_why(body: object, reason: str) -> None:
    with pytest.raises(ReplyShapeError, match=reason):
        parse_reply(body, FIELDS)


def test_attachments_by_url_and_file_id() -> None:
    reply = parse_reply(
        {
            "content": "See attached",
            "attachments": [
                "https://example.com/a.JPG?x=1",
                "https://example.com/report.pdf",
                {"type": "photo", "file_id": FILE_ID, "caption": "receipt"},
            ],
        },
        FIELDS,
    )
    entries = reply_entries(ROUTE, reply, origin="pipeline", ttl=60, now=1000.0)
    assert [e.method for e in entries] == ["sendMessage", "sendPhoto", "sendDocument", "sendPhoto"]
    assert entries[0].payload["text"] == "See attached"
    assert entries[0].payload["reply_parameters"]["message_id"] == 1287
    assert entries[1].payload == {"photo": "https://example.com/a.JPG?x=1"}
    assert entries[3].payload == {"photo": FILE_ID, "caption": "receipt"}
    assert all(e.chat_id == 42 and e.update_id == 99 and e.deadline == 1060.0 for e in entries)
    assert len({e.reply_id for e in entries}) == 4


def test_same_callback_twice_gives_the_same_reply_ids() -> None:
    """A pipeline retrying its callback must not make the user see the reply twice."""
    reply = parse_reply({"content": "Hello"}, FIELDS)
    a = reply_entries(ROUTE, reply, origin="pipeline", ttl=60, now=1.0)
    b = reply_entries(ROUTE, reply, origin="pipeline", ttl=60, now=2.0)
    c = reply_entries(ROUTE, parse_reply({"content": "Other"}, FIELDS), origin="p", ttl=60)
    assert a[0].reply_id == b[0].reply_id
    assert a[0].reply_id != c[0].reply_id


@pytest.mark.parametrize(
    "attachment",
    [
        "file:///etc/passwd",
        "gopher://example.com/_x",
        "/etc/passwd",
        "../x",
        {"type": "photo", "file_id": "file:///etc/passwd"},
        {"type": "document", "url": "ftp://example.com/a.pdf"},
        {"type": "document", "url": "attach://part"},
        {"type": "photo", "file_id": "AgAC 123 with spaces"},
    ],
)
def test_attachments_other_than_urls_and_file_ids_are_refused(attachment: object) -> None:
    with pytest.raises(ReplyShapeError, match="attachment") as info:
        parse_reply({"content": "x", "attachments": [attachment]}, FIELDS)
    assert not isinstance(info.value, NoReplyContent)


def _deep(levels: int, leaf: bytes = b'"hi"') -> object:
    return orjson.loads(b'{"message":' * levels + leaf + b"}" * levels)


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 100, 1000])
def test_deep_bodies_are_a_shape_error_not_a_recursion_error(levels: int) -> None:
    """orjson decodes up to 1024 levels; the reply walk must not recurse that deep."""
    with pytest.raises(ReplyShapeError, match="deeper than") as info:
        parse_reply(_deep(levels), FIELDS)
    assert not isinstance(info.value, NoReplyContent)


def test_text_within_the_nesting_limit_is_found() -> None:
    assert parse_reply(_deep(MAX_NESTING), FIELDS).text == "hi"
    assert parse_reply({"content": "first", "message": _deep(1000)}, FIELDS).text == "first"


def test_a_body_without_text_is_no_reply_content() -> None:
    """{"status": "accepted"} from a synchronous pipeline: the reply comes on the callback."""
    with pytest.raises(NoReplyContent):
        parse_reply({"status": "accepted"}, FIELDS)


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("sendPhoto", {"photo": "file:///etc/passwd"}),
        ("sendDocument", {"document": "/etc/passwd"}),
        ("sendDocument", {"document": FILE_ID, "thumbnail": "attach://t"}),
        ("sendPhoto", {"photo": 5}),
    ],
)
def test_outbound_entries_refuse_bad_attachment_refs(method: str, payload: object) -> None:
    """The envelope itself refuses them: a CRM writing straight to the stream is covered."""
    with pytest.raises(ValidationError, match="payload"):
        OutboundEntry(bot_id=7, chat_id=42, method=method, payload=payload)  # type: ignore[arg-type]
