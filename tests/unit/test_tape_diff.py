"""Diffing two tapes' answers: per chat and inbound message, volatile fields ignored."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.testkit.tapes.diff import diff_tapes, percentiles, render
from gateway.testkit.tapes.tape import Header, Tape, TapeError

BOT = 7689012345


def update(uid: int, chat: int, text: str, at: float) -> dict[str, Any]:
    msg = {"message_id": uid, "date": int(at), "chat": {"id": chat}, "text": text}
    return {"type": "update", "at": at, "update_id": uid, "chat_id": chat,
            "update": {"update_id": uid, "message": msg}}  # fmt: skip


def send(uid: int, chat: int, text: str, at: float, **payload: Any) -> dict[str, Any]:
    body = {"text": text, "reply_parameters": {"message_id": uid}, **payload}
    return {"type": "send", "at": at, "update_id": uid, "chat_id": chat, "reply_id": f"r{at}",
            "method": "sendMessage", "payload": body}  # fmt: skip


def result(uid: int, chat: int, at: float) -> dict[str, Any]:
    return {"type": "result", "at": at, "update_id": uid, "chat_id": chat, "ok": True,
            "message_ids": [int(at * 10)]}  # fmt: skip


def tape(*events: dict[str, Any], bot: int = BOT) -> Tape:
    return Tape(Header(bot_id=bot), list(events))


def base_events(offset: int = 0, chat_a: int = 1, chat_b: int = 2) -> list[dict[str, Any]]:
    """Two chats; ``offset`` shifts update ids, times and message ids (a later run)."""
    o = offset
    return [
        update(100 + o, chat_a, "hi", 1.0 + o),
        send(100 + o, chat_a, "Hello!", 1.1 + o),
        result(100 + o, chat_a, 1.2 + o),
        update(101 + o, chat_b, "price?", 2.0 + o),
        send(101 + o, chat_b, "It is 5.", 2.1 + o),
        send(101 + o, chat_b, "Anything else?", 2.2 + o),
        update(102 + o, chat_a, "bye", 3.0 + o),
        send(102 + o, chat_a, "Bye!", 3.3 + o, reply_markup={"inline_keyboard": [[{"text": "x"}]]}),
    ]  # fmt: skip


def test_the_same_answers_later_are_the_same() -> None:
    """Other update ids, message ids, dates, reply ids and times: no difference."""
    report = diff_tapes(tape(*base_events()), tape(*base_events(offset=1000)))
    assert report.same and report.messages == 3
    assert render(report, "a", "b").startswith("same answers: 3 inbound message(s)")


def test_chats_pair_by_order_when_ids_differ() -> None:
    """Two tapes pseudonymised with different keys still pair their chats."""
    report = diff_tapes(tape(*base_events()), tape(*base_events(chat_a=71, chat_b=72)))
    assert report.same and report.paired_by == "order of first appearance"


def test_a_changed_reply_is_named() -> None:
    """The finding names the chat, the inbound message and what changed."""
    run = base_events()
    run[4] = send(101, 2, "It is 6.", 2.1)
    [finding] = diff_tapes(tape(*base_events()), tape(*run)).findings
    assert finding.kind == "changed"
    assert finding.where == "chat 2 message 1 (update 101 'price?') reply 1"
    assert finding.detail == "text 'It is 5.' -> 'It is 6.'"


def test_missing_extra_and_order() -> None:
    base = base_events()
    missing = [e for e in base if e.get("payload", {}).get("text") != "Anything else?"]
    assert [f.kind for f in diff_tapes(tape(*base), tape(*missing)).findings] == ["missing"]
    assert [f.kind for f in diff_tapes(tape(*missing), tape(*base)).findings] == ["extra"]
    swapped = [*base]
    swapped[4], swapped[5] = send(101, 2, "Anything else?", 2.1), send(101, 2, "It is 5.", 2.2)
    assert [f.kind for f in diff_tapes(tape(*base), tape(*swapped)).findings] == ["order"]


def test_buttons_method_and_attachments_compare() -> None:
    base = base_events()
    run = [*base]
    run[7] = send(102, 1, "Bye!", 3.3, reply_markup={"inline_keyboard": [[{"text": "y"}]]})
    [f] = diff_tapes(tape(*base), tape(*run)).findings
    assert f.detail.startswith("buttons ")
    photo = dict(
        base[1], method="sendPhoto", payload={"photo": "AgAD-file-id", "caption": "Hello!"}
    )
    other_file = dict(photo, payload={"photo": "AgAD-another-id", "caption": "Hello!"})
    b2, r2 = [*base], [*base]
    b2[1], r2[1] = photo, other_file
    assert diff_tapes(tape(*b2), tape(*r2)).same  # a file id is volatile
    [f] = diff_tapes(tape(*base), tape(*r2)).findings
    assert "method 'sendMessage' -> 'sendPhoto'" in f.detail and "attachments" in f.detail


def test_ignore_more_fields() -> None:
    base = base_events()
    run = [*base]
    run[1] = send(100, 1, "Hello!", 1.1, parse_mode="HTML")
    assert not diff_tapes(tape(*base), tape(*run)).same
    assert diff_tapes(tape(*base), tape(*run), ignore=["parse_mode"]).same
    run[1] = send(100, 1, "Hello again!", 1.1)
    assert diff_tapes(tape(*base), tape(*run), ignore=["text"]).same


def test_missing_and_extra_inbound_messages() -> None:
    base = base_events()
    short = base[:6]
    assert [f.kind for f in diff_tapes(tape(*base), tape(*short)).findings] == ["missing-message"]
    assert [f.kind for f in diff_tapes(tape(*short), tape(*base)).findings] == ["extra-message"]


def test_tapes_of_two_bots_are_bad_input() -> None:
    with pytest.raises(TapeError, match="tapes of two bots"):
        diff_tapes(tape(*base_events()), tape(*base_events(), bot=42))


def test_latency_side_by_side() -> None:
    """Each result's time minus its update's: 200 ms for chat 1's only result."""
    report = diff_tapes(tape(*base_events()), tape(*base_events()[:3]))
    assert report.latency["base"]["p50"] == pytest.approx(200.0)
    assert "p99" in render(report, "a", "b")


def test_percentiles_nearest_rank() -> None:
    assert percentiles(range(1, 101)) == {"p50": 50, "p95": 95, "p99": 99}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
