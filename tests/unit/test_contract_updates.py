"""Issue 14's update kinds on the fixtures: deep links, contact status, reactions and
business chats, from the ingress's parsing to the pipeline message and the reply."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gateway.core.contracts import OutboundEntry, extract_update_ids
from gateway.core.replies import Attachment, Reply, reply_entries
from gateway.core.tokens import Route, sign_route, verify_route
from gateway.ingress.updates import InvalidUpdate, parse_update
from tests.helpers import BOT_ID, FIXTURES
from workers.sender.parts import plan_parts
from workers.worker.adapter import UnusableUpdate, adapt, business_chat
from workers.worker.events import event_message, pipeline_message, start_param

ALICE = 6123456789
BOGDAN = 5987654321
CONNECTION = "hB3c9Ik2EEy1BQAAZ4tF0GK1vYk"
SECRET = b"test-delivery-secret-0123"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "updates" / name).read_text())  # type: ignore[no-any-return]


BLOCKED = fixture("06_my_chat_member_bot_blocked.json")  # recorded
START = fixture("07_private_start_deep_link.json")
UNBLOCKED = fixture("08_my_chat_member_bot_unblocked.json")
CONNECTED = fixture("09_business_connection.json")
BUSINESS = fixture("10_business_message.json")
BUSINESS_EDIT = fixture("11_edited_business_message.json")
REACTION = fixture("12_message_reaction.json")


# --- the ingress: is it an update, and whose chat ----------------------------------------


@pytest.mark.parametrize(
    ("update", "chat_id"),
    [
        (BLOCKED, ALICE),
        (UNBLOCKED, ALICE),
        (CONNECTED, BOGDAN),  # no chat: the owner's chat with the bot, user_chat_id
        (BUSINESS, ALICE),
        (BUSINESS_EDIT, ALICE),
        (REACTION, ALICE),
        (START, ALICE),
    ],
)
def test_the_ingress_takes_each_kind_with_its_chat(update: dict[str, Any], chat_id: int) -> None:
    assert parse_update(json.dumps(update).encode()) == (update["update_id"], chat_id)


def test_a_business_connections_chat_is_its_user_chat_id_not_its_users_id() -> None:
    update = copy.deepcopy(CONNECTED)
    update["business_connection"]["user_chat_id"] = 42
    assert extract_update_ids(update) == (42, BOGDAN)


def _broken(update: dict[str, Any], path: tuple[str, ...], value: Any) -> bytes:
    update = copy.deepcopy(update)
    holder = update
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    return json.dumps(update).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_broken(BUSINESS, ("business_message", "chat", "id"), "x"), "business_message.chat.id"),
        (
            _broken(BUSINESS, ("business_message", "business_connection_id"), 123),
            "business_message.business_connection_id is not a string",
        ),
        (
            _broken(CONNECTED, ("business_connection", "user_chat_id"), "5987654321"),
            "business_connection.user_chat_id is not an integer",
        ),
        (
            _broken(CONNECTED, ("business_connection", "user", "id"), True),
            "business_connection.user.id",
        ),
        (_broken(REACTION, ("message_reaction", "user", "id"), 1.5), "message_reaction.user.id"),
        (
            _broken(REACTION, ("message_reaction", "actor_chat"), {"id": "chan"}),
            "message_reaction.actor_chat.id",
        ),
        (_broken(BLOCKED, ("my_chat_member", "from", "id"), None), "my_chat_member.from.id"),
    ],
)
def test_the_ingress_refuses_forged_ids_of_the_new_kinds_with_the_field(
    body: bytes, reason: str
) -> None:
    with pytest.raises(InvalidUpdate, match=reason):
        parse_update(body)


# --- deep links ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (None, None),
        ("summer24_tv", "summer24_tv"),
        ("  c-1  ", "c-1"),
        ("a" * 64, "a" * 64),
        ("a" * 65, None),  # longer than a t.me link carries
        ("two words", None),
        ("utm=1", None),
        ("привет", None),
        ("", None),
    ],
)
def test_start_param_is_what_a_deep_link_can_carry(args: str | None, expected: str | None) -> None:
    assert start_param(args) == expected


def test_a_deep_link_reaches_the_pipeline_with_its_start_param() -> None:
    message = pipeline_message(START, BOT_ID, deep_link="summer24_tv")
    assert message is not None and message.quiet
    assert message.content == "/start summer24_tv"
    assert message.metadata["start_param"] == "summer24_tv"
    assert message.metadata["update_type"] == "message"
    plain = pipeline_message(START, BOT_ID)
    assert plain is not None and "start_param" not in plain.metadata and not plain.quiet


# --- contact status -----------------------------------------------------------------------


def test_block_and_unblock_are_contact_status_events_when_on() -> None:
    blocked = event_message(BLOCKED, BOT_ID, contact_status=True)
    active = event_message(UNBLOCKED, BOT_ID, contact_status=True)
    assert blocked is not None and active is not None
    assert blocked.body()["content"] == "" and blocked.quiet
    assert blocked.client_id == f"telegram_{ALICE}" and blocked.chat_id == ALICE
    assert blocked.event == "contact_status" and blocked.reply_to is None
    meta = blocked.metadata
    assert (meta["event"], meta["status"], meta["previous_status"]) == (
        "contact_status",
        "blocked",
        "active",
    )
    assert (active.metadata["status"], active.metadata["previous_status"]) == ("active", "blocked")
    assert blocked.timestamp == "2025-01-04T12:23:20+00:00"
    assert meta["update_id"] == BLOCKED["update_id"] and meta["username"] == "alice_novak"


def test_contact_status_is_off_by_default_and_never_for_a_group() -> None:
    assert event_message(BLOCKED, BOT_ID) is None
    group = copy.deepcopy(BLOCKED)
    group["my_chat_member"]["chat"] = {"id": -1002143658709, "title": "Ops", "type": "supergroup"}
    assert event_message(group, BOT_ID, contact_status=True) is None
    odd = copy.deepcopy(BLOCKED)
    odd["my_chat_member"]["new_chat_member"]["status"] = "administrator"
    assert event_message(odd, BOT_ID, contact_status=True) is None


# --- reactions ----------------------------------------------------------------------------


def test_a_reaction_is_an_event_naming_the_message_and_its_reactions() -> None:
    message = event_message(REACTION, BOT_ID)
    assert message is not None and message.event == "reaction"
    assert message.metadata["message_id"] == 1289
    assert message.metadata["reactions"] == ["\U0001f44d"]
    assert message.metadata["old_reactions"] == []
    custom = copy.deepcopy(REACTION)
    custom["message_reaction"]["old_reaction"] = [{"type": "custom_emoji", "custom_emoji_id": "5"}]
    custom["message_reaction"]["new_reaction"] = [{"type": "paid"}]
    again = event_message(custom, BOT_ID)
    assert again is not None
    assert (again.metadata["reactions"], again.metadata["old_reactions"]) == (
        ["paid"],
        ["custom:5"],
    )


def test_an_anonymous_reaction_has_no_contact_to_tell() -> None:
    anonymous = copy.deepcopy(REACTION)
    del anonymous["message_reaction"]["user"]
    anonymous["message_reaction"]["actor_chat"] = {"id": -1002143658709, "type": "channel"}
    assert event_message(anonymous, BOT_ID) is None


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (("new_reaction",), "👍", "new_reaction is not a list"),
        (("new_reaction",), [{"type": "emoji"}] * 17, "new_reaction is not a list"),
        (("new_reaction",), [{"type": "sticker", "emoji": "x"}], "no known type"),
        (("old_reaction",), None, "old_reaction is not a list"),
        (("message_id",), "1289", "message_id is not an integer"),
        (("chat",), None, "chat has no id"),
        (("user",), {"first_name": "Alice"}, "user has no user id"),
    ],
)
def test_a_malformed_reaction_is_unusable_with_the_reason(
    path: tuple[str, ...], value: Any, reason: str
) -> None:
    update = copy.deepcopy(REACTION)
    update["message_reaction"][path[0]] = value
    with pytest.raises(UnusableUpdate, match=reason):
        event_message(update, BOT_ID)


# --- business chats -----------------------------------------------------------------------


def test_a_business_connection_is_an_event_for_its_owner() -> None:
    message = event_message(CONNECTED, BOT_ID)
    assert message is not None and message.event == "business_connection"
    assert message.client_id == f"telegram_{BOGDAN}" and message.chat_id == BOGDAN
    meta = message.metadata
    assert meta["business_connection_id"] == CONNECTION
    assert (meta["enabled"], meta["can_reply"]) == (True, True)
    assert message.business_connection_id is None  # its replies go to the owner's own chat
    disabled = copy.deepcopy(CONNECTED)
    disabled["business_connection"]["is_enabled"] = False
    disabled["business_connection"]["rights"] = {}
    off = event_message(disabled, BOT_ID)
    assert off is not None and (off.metadata["enabled"], off.metadata["can_reply"]) == (
        False,
        False,
    )


@pytest.mark.parametrize("update", [BUSINESS, BUSINESS_EDIT])
def test_a_business_message_keeps_its_connection_for_the_reply(update: dict[str, Any]) -> None:
    message = adapt(update, BOT_ID)
    assert message is not None and not message.quiet
    assert message.business_connection_id == CONNECTION == business_chat(update)
    assert message.metadata["business_connection_id"] == CONNECTION
    assert message.chat_id == ALICE and message.client_id == f"telegram_{ALICE}"
    assert message.reply_to == 4410
    assert message.content.endswith("kettle still in stock?")
    assert message.metadata.get("edited") is (True if "edited_business_message" in update else None)


def test_the_business_accounts_own_messages_are_not_for_the_pipeline() -> None:
    outgoing = copy.deepcopy(BUSINESS)
    outgoing["business_message"]["from"] = {"id": BOGDAN, "is_bot": False, "first_name": "B"}
    assert adapt(outgoing, BOT_ID) is None


@pytest.mark.parametrize("connection", ["", "a" * 129, "has space", "tab\tid", "ид"])
def test_a_malformed_business_connection_id_is_unusable(connection: str) -> None:
    update = copy.deepcopy(BUSINESS)
    update["business_message"]["business_connection_id"] = connection
    with pytest.raises(UnusableUpdate, match="business_connection_id"):
        adapt(update, BOT_ID)
    assert business_chat(update) is None
    bad = copy.deepcopy(CONNECTED)
    bad["business_connection"]["id"] = connection
    with pytest.raises(UnusableUpdate, match=r"business_connection\.id"):
        event_message(bad, BOT_ID)


def test_the_callback_token_carries_the_business_connection() -> None:
    token = sign_route(
        SECRET,
        bot_id=BOT_ID,
        chat_id=ALICE,
        reply_to=4410,
        update_id=1,
        ttl=60,
        business_connection_id=CONNECTION,
    )
    assert verify_route(SECRET, token, bot_id=BOT_ID).business_connection_id == CONNECTION
    longest = sign_route(  # the longest id the worker forwards still fits a token (512)
        SECRET,
        bot_id=BOT_ID,
        chat_id=-1002143658709,
        reply_to=2**31 - 1,
        update_id=2**31 - 1,
        ttl=7 * 86_400,
        received_at=1_735_993_207.123,
        business_connection_id="x" * 128,
    )
    assert verify_route(SECRET, longest, bot_id=BOT_ID).business_connection_id == "x" * 128
    plain = sign_route(SECRET, bot_id=BOT_ID, chat_id=ALICE, reply_to=None, update_id=1, ttl=60)
    assert verify_route(SECRET, plain, bot_id=BOT_ID).business_connection_id is None


def test_every_reply_to_a_business_chat_is_sent_through_its_connection() -> None:
    route = Route(BOT_ID, ALICE, 4410, 1, 0, business_connection_id=CONNECTION)
    reply = Reply(text="Yes, two left.", attachments=[Attachment("photo", "https://x/k.jpg")])
    entries = reply_entries(route, reply, origin="pipeline", ttl=60)
    assert [e.payload["business_connection_id"] for e in entries] == [CONNECTION, CONNECTION]
    assert entries[0].payload["reply_parameters"]["message_id"] == 4410
    plain = reply_entries(Route(BOT_ID, ALICE, 4410, 1, 0), reply, origin="pipeline", ttl=60)
    assert all("business_connection_id" not in e.payload for e in plain)


def test_a_long_captions_follow_up_messages_stay_in_the_business_chat() -> None:
    entry = OutboundEntry(
        bot_id=BOT_ID,
        chat_id=ALICE,
        method="sendPhoto",
        payload={
            "photo": "https://x/k.jpg",
            "caption": "word " * 400,
            "business_connection_id": CONNECTION,
        },
    )
    parts = plan_parts(entry)
    assert len(parts) > 1 and parts[1][0] == "sendMessage"
    assert all(payload["business_connection_id"] == CONNECTION for _, payload in parts)
