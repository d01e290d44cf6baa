"""Record's pure parts: time arguments, the selection, stream entries as events."""

from __future__ import annotations

import orjson
import pytest

from gateway.core.contracts import OutboundEntry, result_fields, update_fields
from gateway.testkit.tapes.record import Selection, parse_when, stream_event

NOW = 1_764_601_200.0  # 2025-12-01T15:00:00Z


def test_relative_and_absolute_times() -> None:
    assert parse_when("10m", NOW) == NOW - 600
    assert parse_when("1.5h", NOW) == NOW - 5400
    assert parse_when("2025-12-01T15:00:00", NOW) == NOW  # no zone: UTC
    assert parse_when("2025-12-01T16:00:00+01:00", NOW) == NOW
    with pytest.raises(ValueError, match="not a time: 'soon'"):
        parse_when("soon", NOW)


def _update(uid: int, chat: int, kind: str = "message") -> dict[str, object]:
    body = {"update_id": uid, kind: {"chat": {"id": chat}}}
    return stream_event("update", f"{uid}-0", update_fields(
        bot_id=1, update_id=uid, chat_id=chat, source="webhook",
        raw_update=orjson.dumps(body), received_at=float(uid)))  # fmt: skip


def _send(uid: int, chat: int) -> dict[str, object]:
    entry = OutboundEntry(bot_id=1, chat_id=chat, update_id=uid, enqueued_at=uid + 0.5)
    return stream_event("send", f"{uid}-1", entry.to_fields())


def test_entries_become_events() -> None:
    u, s = _update(5, 10), _send(5, 10)
    r = stream_event("result", "6-0", result_fields(
        reply_id="r", chat_id=10, method="sendMessage", ok=True, message_ids=[3], attempts=1,
        queue_latency_ms=1.5, send_latency_ms=2.5, update_id=5))  # fmt: skip
    assert (u["type"], u["update_id"], u["chat_id"], u["at"]) == ("update", 5, 10, 5.0)
    assert (s["type"], s["update_id"], s["chat_id"], s["method"]) == ("send", 5, 10, "sendMessage")
    assert (
        r["ok"] is True
        and r["message_ids"] == [3]
        and r["latency"]
        == {
            "queue_ms": 1.5,
            "send_ms": 2.5,
        }
    )


def test_selection_by_window_chat_type_and_bot() -> None:
    """A send is kept with the update it answers when --type selects; by chat otherwise."""
    events = [_update(1, 10), _send(1, 10), _update(2, 20, "callback_query"), _send(2, 20),
              _update(3, 10), _send(3, 10)]  # fmt: skip

    def kept(sel: Selection) -> list[tuple[object, object]]:
        return [(e["type"], e["update_id"]) for e in events if sel.keep(e)]

    assert kept(Selection(chats=frozenset({20}))) == [("update", 2), ("send", 2)]
    assert kept(Selection(types=frozenset({"message"}))) == [
        ("update", 1), ("send", 1), ("update", 3), ("send", 3)]  # fmt: skip
    assert kept(Selection(since=2.0, until=3.0)) == [("update", 2), ("send", 2), ("update", 3)]
    assert kept(Selection(bot_id=2)) == []
