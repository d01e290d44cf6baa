"""The tape format: a header then events; bad tapes are one clear ``TapeError`` line."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from gateway.testkit.tapes.tape import Header, TapeError, read_tape, write_tape

BOT = 7689012345
EVENTS = [
    {"type": "update", "at": 1.0, "update_id": 5, "chat_id": 1, "update": {"update_id": 5}},
    {"type": "send", "at": 2.0, "update_id": 5, "chat_id": 1, "method": "sendMessage"},
    {"type": "result", "at": 3.0, "update_id": 5, "ok": True, "message_ids": [9]},
]


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    """What is written is read back: header fields and events in order, gzip by name."""
    path = tmp_path / name
    header = Header(bot_id=BOT, bot_username="b", source={"prefix": "tg"}, time_range=(1, 3))
    assert write_tape(path, header, EVENTS) == 3
    tape = read_tape(path, bot_id=BOT)
    assert tape.events == EVENTS
    assert (tape.header.bot_id, tape.header.bot_username, tape.header.time_range) == (
        BOT,
        "b",
        (1, 3),
    )
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b'{"')


def _tape(tmp_path: Path, text: str, name: str = "t.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _header(**over: object) -> str:
    return orjson.dumps({**Header(bot_id=BOT).to_json(), **over}).decode() + "\n"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("", "empty file"),
        ('{"kind": "other"}\n', "not a tape"),
        (_header(schema=99), "tape schema 99 is not supported"),
        (_header() + '{"type": "update", "at": 1, "upd', "truncated"),
        (_header() + "not json\n", ":2: corrupt line"),
        (_header() + '{"type": "nope", "at": 1}\n', ":2: unknown event 'nope'"),
        (_header() + '{"type": "send"}\n', "without a numeric 'at'"),
        (_header() + '{"type": "update", "at": 1}\n', "without its Update"),
    ],
)
def test_bad_tapes_are_one_clear_line(tmp_path: Path, body: str, says: str) -> None:
    """Each defect is named, with the file and line, in one line."""
    with pytest.raises(TapeError) as caught:
        read_tape(_tape(tmp_path, body))
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_another_bots_tape_is_refused(tmp_path: Path) -> None:
    """A tape names its bot; reading it for another bot fails before any event is used."""
    path = _tape(tmp_path, _header())
    with pytest.raises(TapeError, match=f"tape of bot {BOT}, not of this bot \\(42\\)"):
        read_tape(path, bot_id=42)


def test_truncated_gzip(tmp_path: Path) -> None:
    """A gzip tape cut short (a copy that stopped) is reported, not half read."""
    path = tmp_path / "t.jsonl.gz"
    write_tape(path, Header(bot_id=BOT), EVENTS * 50)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(TapeError, match="truncated or corrupt gzip"):
        read_tape(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TapeError, match="no such tape"):
        read_tape(tmp_path / "absent.jsonl")


def test_header_never_holds_a_key() -> None:
    """The header's redaction entry is what the caller describes: no key field exists."""
    assert set(Header(bot_id=BOT).to_json()) == {
        "kind",
        "schema",
        "bot",
        "source",
        "time_range",
        "redaction",
    }


def test_gzip_written_is_plain_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    write_tape(path, Header(bot_id=BOT), EVENTS)
    assert gzip.decompress(path.read_bytes()).count(b"\n") == 4


def test_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(TapeError, match="cannot write a tape here"):
        write_tape(tmp_path / "no" / "such" / "dir.jsonl", Header(bot_id=BOT), EVENTS)
