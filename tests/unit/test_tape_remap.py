"""``replay --remap-ids``: test-range ids, consistent within a replay, mapped back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app.cli import main
from gateway.testkit.tapes.emulator_chats import chats_to_register
from gateway.testkit.tapes.remap import IdMap, id_kind, in_test_range
from gateway.testkit.tapes.replay import Timing, plan
from gateway.testkit.tapes.tape import Header, Tape, write_tape

BOT = 7689012345
ALICE, GROUP, SUPER = 7_123_456_789, -912_345_678, -1_009_123_456_789


def update(uid: int, chat: int, user: int, at: float) -> dict[str, Any]:
    ctype = "private" if chat > 0 else ("supergroup" if chat < -(10**12) else "group")
    msg = {"message_id": uid, "from": {"id": user, "first_name": "first-1a2b"},
           "chat": {"id": chat, "type": ctype, "title": "chat-x"}, "text": "hi",
           "reply_to_message": {"from": {"id": BOT, "is_bot": True}}}  # fmt: skip
    return {"type": "update", "at": at, "update_id": uid, "chat_id": chat,
            "update": {"update_id": uid, "message": msg}}  # fmt: skip


TAPE = Tape(
    Header(bot_id=BOT),
    [update(1, ALICE, ALICE, 1.0), update(2, GROUP, ALICE, 2.0), update(3, SUPER, ALICE, 3.0),
     update(4, ALICE, ALICE, 4.0)],
)  # fmt: skip


def test_ids_land_in_their_kinds_test_range_consistently() -> None:
    """One id, one test id; users stay positive, groups and supergroups keep their kind."""
    ids = IdMap(keep=(BOT,))
    assert ids(ALICE) == ids(ALICE) == 9_900_000_001
    assert ids(GROUP) == -999_900_000_001 and id_kind(ids(GROUP)) == "group"
    assert ids(SUPER) == -1_008_000_000_001 and id_kind(ids(SUPER)) == "supergroup"
    assert ids(BOT) == BOT and ids(0) == 0
    assert all(in_test_range(v) for v in ids.forward.values())
    assert not in_test_range(ALICE) and not in_test_range(GROUP)


def test_a_remapped_plan_sends_test_ids_and_keeps_the_tapes() -> None:
    """The body goes out in test ids (the bot's own id kept); the step knows the tape's."""
    ids = IdMap(keep=(BOT,))
    steps = plan(TAPE, Timing(fast=True), first_id=100, ids=ids)
    assert [s.chat_id for s in steps] == [ALICE, GROUP, SUPER, ALICE]
    assert [s.target_chat for s in steps] == [9_900_000_001, -999_900_000_001,
                                              -1_008_000_000_001, 9_900_000_001]  # fmt: skip
    body = orjson.loads(steps[1].body())
    msg = body["message"]
    assert body["update_id"] == 101 and msg["chat"]["id"] == -999_900_000_001
    assert msg["from"]["id"] == 9_900_000_001 and msg["reply_to_message"]["from"]["id"] == BOT
    assert str(ALICE) not in steps[0].body().decode()


def test_back_restores_the_tapes_ids_in_every_event_kind() -> None:
    ids = IdMap(keep=(BOT,))
    sent = ids.apply(TAPE.events[0])
    send = {"type": "send", "chat_id": str(ids(ALICE)), "payload": {"user_id": ids(ALICE)}}
    result = {"type": "result", "chat_id": ids(ALICE), "message_ids": [9_900_000_001]}
    assert ids.back(sent) == TAPE.events[0]
    assert ids.back(send) == {"type": "send", "chat_id": str(ALICE), "payload": {"user_id": ALICE}}
    assert ids.back(result)["chat_id"] == ALICE
    assert ids.back(result)["message_ids"] == [9_900_000_001]  # not an id field


def test_dry_run_shows_the_remap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.jsonl"
    write_tape(path, TAPE.header, TAPE.events)
    assert main(["replay", str(path), "--dry-run", "--remap-ids", "--fast"]) == 0
    out = capsys.readouterr().out
    assert f"chat {ALICE} -> 9900000001" in out and f"chat {GROUP} -> -999900000001" in out


def test_the_emulator_gets_each_chat_once_with_its_type_and_title() -> None:
    steps = plan(TAPE, Timing(fast=True), first_id=100, ids=IdMap(keep=(BOT,)))
    chats = chats_to_register((s.target_chat, s.body_update()) for s in steps)
    assert list(chats) == [9_900_000_001, -999_900_000_001, -1_008_000_000_001]
    assert chats[-999_900_000_001] == {"chat_id": -999_900_000_001, "type": "group",
                                       "title": "chat-x"}  # fmt: skip
