"""Streamed reply bodies (pure): a draft's checks, its entry, its draft_id, the final's key."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.drafts import DRAFT_LIMIT, DRAFT_METHOD, DRAFT_TTL, Draft, draft_id
from gateway.core.errors import ReplyShapeError
from gateway.core.replies import Edit, Reply, parse_reply, reply_entries
from gateway.core.tokens import Route
from gateway.testkit.reference.stream import MAX_DRAFTS, draft_texts, streamed_bodies

FIELDS = ["content", "response", "text", "message"]
ROUTE = Route(bot_id=7, chat_id=42, reply_to=1287, update_id=99, expires_at=0)
GROUP = Route(bot_id=7, chat_id=-1002143658709, reply_to=5, update_id=99, expires_at=0)


def entries(body: dict[str, Any], route: Route = ROUTE) -> list[Any]:
    return reply_entries(route, parse_reply(body, FIELDS), origin="pipeline", ttl=60, now=1.0)


def test_a_draft_becomes_one_send_message_draft_with_a_short_deadline() -> None:
    """The draft's text and parse_mode go as sendMessageDraft, unthreaded, for 5 s."""
    [entry] = entries({"draft": "Looking <b>it</b> up", "reply_key": "r1", "parse_mode": "HTML"})
    assert entry.method == DRAFT_METHOD
    assert entry.payload == {
        "draft_id": draft_id(ROUTE, "r1"),
        "text": "Looking <b>it</b> up",
        "parse_mode": "HTML",
    }
    assert entry.deadline == pytest.approx(1.0 + DRAFT_TTL)
    assert (entry.chat_id, entry.update_id) == (42, 99)


def test_draft_id_is_stable_per_reply_key_and_differs_between_replies() -> None:
    """Every draft of one reply animates one bubble; another key or update is another."""
    ids = {
        draft_id(ROUTE, "r1"),
        draft_id(ROUTE, "r2"),
        draft_id(Route(7, 42, 1287, 100, 0), "r1"),
        draft_id(Route(8, 42, 1287, 99, 0), "r1"),
    }
    assert len(ids) == 4
    assert draft_id(ROUTE, "r1") == draft_id(Route(7, 42, None, 99, 123), "r1")
    assert all(0 < i < 2**31 for i in ids)


def test_no_draft_entry_for_a_group_or_a_business_chat() -> None:
    """Telegram shows drafts in private chats only: the final alone is sent there."""
    body = {"draft": "Looking it up", "reply_key": "r1"}
    assert entries(body, GROUP) == []
    business = Route(7, 42, 1287, 99, 0, business_connection_id="bc-1")
    assert entries(body, business) == []


def test_the_final_carries_its_reply_key_and_is_sent_as_ever() -> None:
    """A reply body with reply_key is an ordinary reply that ends the stream."""
    reply = parse_reply({"content": "Done: 42", "reply_key": "r1"}, FIELDS)
    assert isinstance(reply, Reply) and reply.reply_key == "r1"
    [entry] = reply_entries(ROUTE, reply, origin="pipeline", ttl=60, now=1.0)
    assert entry.method == "sendMessage" and entry.payload["text"] == "Done: 42"
    assert parse_reply({"content": "x", "reply_key": 17}, FIELDS) == Reply("x", reply_key="17")
    assert parse_reply({"content": "x"}, FIELDS) == Reply("x")  # today's bodies: unchanged


def test_integer_reply_keys_are_taken_as_text() -> None:
    assert parse_reply({"draft": "a", "reply_key": 5}, FIELDS) == Draft("a", "5")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"draft": "x" * (DRAFT_LIMIT + 1), "reply_key": "k"}, "longer than 4096"),
        ({"draft": "😀" * 2049, "reply_key": "k"}, "longer than 4096"),  # UTF-16 units
        ({"draft": "", "reply_key": "k"}, "empty"),
        ({"draft": "   \n", "reply_key": "k"}, "empty"),
        ({"draft": 42, "reply_key": "k"}, "must be a string"),
        ({"draft": ["a"], "reply_key": "k"}, "must be a string"),
        ({"draft": {"text": "a"}, "reply_key": "k"}, "must be a string"),
        ({"draft": "a"}, "needs its 'reply_key'"),
        ({"draft": "a", "reply_key": ""}, "'reply_key' must be"),
        ({"draft": "a", "reply_key": "has space"}, "'reply_key' must be"),
        ({"draft": "a", "reply_key": "k" * 65}, "'reply_key' must be"),
        ({"draft": "a", "reply_key": True}, "'reply_key' must be"),
        ({"draft": "a", "reply_key": {"k": 1}}, "'reply_key' must be"),
        ({"draft": "a", "reply_key": "k", "buttons": [[{"text": "Y", "url": "https://x.y"}]]},
         "cannot be combined with buttons"),
        ({"draft": "a", "reply_key": "k", "attachments": ["https://x.y/a.pdf"]},
         "cannot be combined with attachments"),
        ({"draft": "a", "reply_key": "k", "content": "final?"}, "cannot be combined with content"),
        ({"draft": "a", "reply_key": "k", "reply_to": 5}, "cannot be combined with reply_to"),
        ({"draft": "a", "reply_key": "k", "status_url": "https://crm/x"},
         "cannot be combined with status_url"),
        ({"draft": "a", "reply_key": "k", "parse_mode": "BBCode"}, "parse_mode must be"),
        ({"draft": "a", "reply_key": "k", "edit": "u1-0-abc"}, "one of edit, draft"),
        ({"content": "x", "reply_key": "bad key"}, "'reply_key' must be"),
        ({"edit": "u1-0-abc", "content": "x", "reply_key": "k"},
         "cannot be combined with reply_key"),
        ({"delete": "u1-0-abc", "reply_key": "k"}, "cannot be combined with reply_key"),
    ],
)  # fmt: skip
def test_a_hostile_or_confused_draft_body_is_refused_with_its_reason(
    body: dict[str, Any], why: str
) -> None:
    with pytest.raises(ReplyShapeError, match=why):
        parse_reply(body, FIELDS)


def test_a_draft_of_exactly_4096_units_is_taken() -> None:
    assert parse_reply({"draft": "x" * DRAFT_LIMIT, "reply_key": "k"}, FIELDS) == Draft(
        "x" * DRAFT_LIMIT, "k"
    )


def test_edits_are_unchanged_by_the_new_field() -> None:
    assert parse_reply({"edit": "u1-0-abc", "content": "x"}, FIELDS) == Edit("u1-0-abc", "x")


def test_the_reference_pipeline_streams_growing_prefixes_then_the_final() -> None:
    """Each draft is the text so far, by whole words, at most MAX_DRAFTS; then the final."""
    assert draft_texts("one two three four") == ["one", "one two", "one two three"]
    assert draft_texts("single") == []
    long = " ".join(f"w{i}" for i in range(100))
    texts = draft_texts(long)
    assert 1 < len(texts) <= MAX_DRAFTS
    assert all(long.startswith(t) and len(t) < len(long) for t in texts)
    assert texts == sorted(texts, key=len) and len(set(texts)) == len(texts)
    bodies = streamed_bodies({"content": "a b c", "message_id": "m1"}, "m1")
    assert bodies == [
        {"draft": "a", "reply_key": "m1"},
        {"draft": "a b", "reply_key": "m1"},
        {"content": "a b c", "message_id": "m1", "reply_key": "m1"},
    ]
    for body in bodies:  # each one a body the gateway takes
        parse_reply(body, FIELDS)
