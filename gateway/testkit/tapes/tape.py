"""The tape format: JSON Lines (gzip when the name ends in ``.gz``), a header, then events.

Line 1 is the header (``kind: "tape"``, ``schema``, ``bot``, ``source``, ``time_range``,
``redaction``); every further line is one event in time order: ``update`` (the Update as
received), ``send`` (one outbound entry) or ``result`` (the sender's outcome of one send).
``read_tape`` raises ``TapeError`` (a ``UsageError``: the CLI prints one line, exit 2)
for a missing, truncated or corrupt file, an unknown schema version or another bot.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.core.errors import UsageError

TAPE_SCHEMA = 1
EVENT_TYPES = ("update", "send", "result")


class TapeError(UsageError):
    """A tape that cannot be used: names the file and, where known, the line."""


@dataclass(slots=True)
class Header:
    """The tape's first line. ``redaction`` says what was hidden, never the key.
    ``bot_name``: the bot's name in the deployment's registry (issue 15; absent from
    tapes recorded before, and from a tape of no registered bot)."""

    bot_id: int
    bot_username: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    time_range: tuple[float | None, float | None] = (None, None)
    redaction: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    schema: int = TAPE_SCHEMA
    bot_name: str | None = None

    @property
    def bot(self) -> str:
        """How a line names the tape's bot: ``alpha (201)``, or its id."""
        return f"{self.bot_name} ({self.bot_id})" if self.bot_name else str(self.bot_id)

    def to_json(self) -> dict[str, Any]:
        bot: dict[str, Any] = {"id": self.bot_id, "username": self.bot_username}
        if self.bot_name is not None:
            bot["name"] = self.bot_name
        return {
            "kind": "tape",
            "schema": self.schema,
            "bot": bot,
            "source": self.source,
            "time_range": {"from": self.time_range[0], "to": self.time_range[1]},
            "redaction": self.redaction,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Header:
        if not isinstance(data, dict) or data.get("kind") != "tape":
            raise TapeError(f"{where}: not a tape (line 1 is no tape header)")
        schema = data.get("schema")
        if schema != TAPE_SCHEMA:
            raise TapeError(
                f"{where}: tape schema {schema!r} is not supported (this tool reads {TAPE_SCHEMA})"
            )
        try:
            bot = data["bot"]
            span = data.get("time_range") or {}
            return cls(
                bot_id=int(bot["id"]),
                bot_username=bot.get("username"),
                source=dict(data.get("source") or {}),
                time_range=(span.get("from"), span.get("to")),
                redaction=dict(data.get("redaction") or {}),
                schema=schema,
                bot_name=None if bot.get("name") is None else str(bot["name"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TapeError(f"{where}: bad tape header ({type(exc).__name__}: {exc})") from exc


Event = dict[str, Any]
"""One event line: ``{"type": "update"|"send"|"result", "at": epoch seconds, ...}``."""


@dataclass(slots=True)
class Tape:
    header: Header
    events: list[Event]

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e["type"] == kind]


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.name.endswith(".gz"):
        raw = gzip.GzipFile(path, mode + "b")
        return io.TextIOWrapper(raw, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


class TapeWriter:
    """Writes a header then events, one line each; ``close`` flushes (gzip: a valid end)."""

    def __init__(self, path: str | os.PathLike[str], header: Header) -> None:
        self.path = Path(path)
        try:
            self._out = _open_text(self.path, "w")
        except OSError as exc:
            raise TapeError(f"{self.path}: cannot write a tape here ({exc.strerror})") from None
        self._line(header.to_json())
        self.count = 0

    def _line(self, data: dict[str, Any]) -> None:
        self._out.write(orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode())
        self._out.write("\n")

    def write(self, event: Event) -> None:
        self._line(event)
        self.count += 1

    def write_all(self, events: Iterable[Event]) -> None:
        for event in events:
            self.write(event)

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        self._out.close()

    def __enter__(self) -> TapeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_tape(path: str | os.PathLike[str], header: Header, events: Iterable[Event]) -> int:
    with TapeWriter(path, header) as writer:
        writer.write_all(events)
        return writer.count


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with _open_text(path, "r") as src:
            yield from enumerate(src, 1)
    except FileNotFoundError:
        raise TapeError(f"{path}: no such tape") from None
    except IsADirectoryError:
        raise TapeError(f"{path}: is a directory, not a tape") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise TapeError(f"{path}: truncated or corrupt gzip ({exc})") from None
    except UnicodeDecodeError:
        raise TapeError(f"{path}: not a tape (not UTF-8 text)") from None


def _check_event(data: Any, where: str) -> Event:
    if not isinstance(data, dict) or data.get("type") not in EVENT_TYPES:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise TapeError(f"{where}: unknown event {kind!r} (expected one of {EVENT_TYPES})")
    if not isinstance(data.get("at"), int | float):
        raise TapeError(f"{where}: event without a numeric 'at'")
    if data["type"] == "update" and not isinstance(data.get("update"), dict):
        raise TapeError(f"{where}: update event without its Update object")
    return data


def read_tape(path: str | os.PathLike[str], *, bot_id: int | None = None) -> Tape:
    """The whole tape, checked line by line; ``bot_id`` given: refuse another bot's tape."""
    p = Path(path)
    header: Header | None = None
    events: list[Event] = []
    last = ""
    for number, line in _lines(p):
        last = line
        where = f"{p}:{number}"
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            if not line.endswith("\n"):
                raise TapeError(f"{where}: truncated tape (last line cut off)") from None
            raise TapeError(f"{where}: corrupt line (not JSON)") from None
        if header is None:
            header = Header.from_json(data, str(p))
            if bot_id is not None and header.bot_id != bot_id:
                raise TapeError(f"{p}: tape of bot {header.bot}, not of this bot ({bot_id})")
        else:
            events.append(_check_event(data, where))
    if header is None:
        raise TapeError(f"{p}: empty file, not a tape")
    if last and not last.endswith("\n"):
        raise TapeError(f"{p}: truncated tape (no newline after the last event)")
    return Tape(header, events)
