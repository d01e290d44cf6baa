"""Redaction on write: no generated name, phone or e-mail survives; pseudonyms are stable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.testkit.tapes.redact import RedactionRules, Redactor
from gateway.testkit.tapes.tape import Header, read_tape, write_tape

KEY = b"k" * 32
BOT = 7689012345

names = st.builds(
    lambda a, b: a + b,
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=10),
)
usernames = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{4,16}", fullmatch=True)
phones = st.from_regex(r"\+?[1-9]\d{1,2}([ -]?\d{3,4}){2,3}", fullmatch=True)


def conversation(
    first: str, last: str, username: str, phone: str, email: str, user_id: int
) -> list[dict[str, Any]]:
    """A user writes their contacts in free text and shares a contact; the bot greets
    them by name; the sender reports the result."""
    user = {"id": user_id, "is_bot": False, "first_name": first, "last_name": last,
            "username": username}  # fmt: skip
    chat = {"id": user_id, "type": "private", "first_name": first, "username": username}
    text = f"I am {first} {last}, mail me at {email} or call {phone} (@{username})"
    return [
        {"type": "update", "at": 1.0, "update_id": 10, "chat_id": user_id, "source": "webhook",
         "update": {"update_id": 10, "message": {"message_id": 1, "date": 1, "from": user,
                                                 "chat": chat, "text": text}}},
        {"type": "update", "at": 2.0, "update_id": 11, "chat_id": user_id, "source": "webhook",
         "update": {"update_id": 11, "message": {
             "message_id": 2, "date": 2, "from": user, "chat": chat,
             "contact": {"phone_number": phone, "first_name": first, "user_id": user_id}}}},
        {"type": "send", "at": 3.0, "update_id": 10, "chat_id": user_id, "reply_id": "r1",
         "method": "sendMessage", "payload": {"text": f"Hello, {first}! Is {email} right?"}},
        {"type": "result", "at": 4.0, "update_id": 10, "chat_id": str(user_id), "ok": False,
         "reply_id": "r1", "description": f"Bad Request: chat {user_id} of {first}"},
    ]  # fmt: skip


def _record(tmp_path: Path, events: list[dict[str, Any]], redactor: Redactor) -> str:
    path = tmp_path / "t.jsonl"
    header = Header(bot_id=BOT, redaction=redactor.rules.describe())
    write_tape(path, header, [redactor.event(e) for e in events])
    return path.read_text()


SKELETON = orjson.dumps(conversation("Qqqq", "Qqqq", "qqqqq", "+1 000 000", "q@q.qq", 1)).decode()


@settings(max_examples=80, deadline=None)
@given(names, names, usernames, phones, st.emails(), st.integers(10**8, 10**10))
def test_no_name_phone_or_email_reaches_a_tape(
    tmp_path_factory: Any, first: str, last: str, username: str, phone: str, email: str, uid: int
) -> None:
    """Whatever the person is called and writes, the tape holds none of it, nor their id."""
    for word in (first, last, username):
        assume(word not in SKELETON and word.lower() not in SKELETON.lower())
    events = conversation(first, last, username, phone, email, uid)
    text = _record(tmp_path_factory.mktemp("t"), events, Redactor(key=KEY))
    for secret in (first, last, username, phone, email, str(uid)):
        assert secret not in text, secret
        assert orjson.dumps(secret).decode()[1:-1] not in text, secret


@given(usernames, st.integers(1, 2**40), st.integers(1, 2**40))
def test_pseudonyms_are_stable_within_a_tape(username: str, uid: int, other: int) -> None:
    """One person is one pseudonym everywhere on a tape; two people are two."""
    assume(uid != other)
    r = Redactor(key=KEY)
    a = r.event(conversation("Ann", "Lee", username, "+1 555 0100", "a@b.cc", uid)[0])
    b = r.event(conversation("Ann", "Lee", username, "+1 555 0100", "a@b.cc", uid)[1])
    c = r.event(conversation("Bob", "Ray", "x" + username, "+1 555 0100", "a@b.cc", other)[0])
    msg_a, msg_b, msg_c = a["update"]["message"], b["update"]["message"], c["update"]["message"]
    assert a["chat_id"] == b["chat_id"] == msg_a["from"]["id"] == msg_b["contact"]["user_id"]
    assert msg_a["from"]["username"] == msg_b["chat"]["username"]
    assert c["chat_id"] != a["chat_id"]
    assert msg_c["from"]["username"] != msg_a["from"]["username"]
    assert a["chat_id"] > 0  # a user stays a user: private chats keep positive ids


def test_group_ids_keep_their_kind() -> None:
    """Groups stay negative, supergroups keep the -100 form; the bot's own id is kept."""
    r = Redactor(RedactionRules(keep_ids=(BOT,)), key=KEY)
    assert -(10**12) < r.pseudo_id(-4123456) < 0
    assert r.pseudo_id(-1002143658709) <= -1_000_000_000_000
    assert r.pseudo_id(BOT) == BOT


def test_another_key_gives_other_pseudonyms() -> None:
    """The key makes pseudonyms unguessable: a run with another key maps elsewhere."""
    assert Redactor(key=KEY).pseudo_id(6123456789) != Redactor(key=b"o" * 32).pseudo_id(6123456789)


def test_header_names_the_rules_not_the_key(tmp_path: Path) -> None:
    """The header says what was hidden and that ids are pseudonymised; the key is absent."""
    r = Redactor(key=b"secret-key-0123456789")
    _record(tmp_path, conversation("Ann", "Lee", "annlee", "+1 555 0100", "a@b.cc", 5), r)
    tape = read_tape(tmp_path / "t.jsonl")
    assert tape.header.redaction["enabled"] is True
    assert tape.header.redaction["pseudonymise_ids"] is True
    assert "first_name" in tape.header.redaction["name_keys"]
    assert "secret-key" not in (tmp_path / "t.jsonl").read_text()


def test_rules_are_configurable() -> None:
    """A rules file may keep e-mails (a support bot that needs them) and names more keys."""
    rules = RedactionRules.from_json({"mask_emails": False, "name_keys": ["first_name", "nick"]})
    r = Redactor(rules, key=KEY)
    out = r.event({"type": "send", "at": 1, "payload": {"text": "x@y.zz", "nick": "Zed"}})
    assert out["payload"]["text"] == "x@y.zz"
    assert out["payload"]["nick"] != "Zed"


def test_a_business_connection_and_a_reaction_keep_no_persons_id() -> None:
    """Issue 14's kinds: ``user_chat_id`` (the owner's chat) and an anonymous reaction's
    ``actor_chat`` are people's or chats' ids too."""
    import json

    from tests.helpers import FIXTURES

    redactor = Redactor(RedactionRules(keep_ids=(BOT,)), KEY)
    for name in ("09_business_connection.json", "12_message_reaction.json"):
        update = json.loads((FIXTURES / "updates" / name).read_text())
        if name.startswith("12"):
            update["message_reaction"]["actor_chat"] = {"id": -1002143658709, "type": "channel"}
        text = orjson.dumps(redactor.event({"type": "update", "update": update})).decode()
        for real in ("5987654321", "6123456789", "-1002143658709", "bogdan_ops", "alice_novak"):
            assert real not in text, (name, real)
