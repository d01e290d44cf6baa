"""Reading the streams into tape events: a bounded, paged XRANGE window, or ``--follow``.

Updates, outbound entries and results become ``update``, ``send`` and ``result`` events
(``stream_event``); a ``Selection`` keeps a time window, chats and update types (a send or
result is kept when the update it answers is). ``--follow`` reads through its own consumer
group on each stream (``RECORDER_GROUP``), so trimming, which respects every group of the
updates and outbound streams, keeps what the recorder has not read yet; the group is
removed when the recording stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.exceptions import ResponseError

from gateway.core.contracts import Keys, decode_fields
from gateway.core.errors import UsageError
from gateway.testkit.tapes.progress import Progress, progress
from gateway.testkit.tapes.redact import NO_REDACTION, RedactionRules, Redactor
from gateway.testkit.tapes.tape import Event, Header, TapeWriter, write_tape

RECORDER_GROUP = "tape-recorder"
PAGE = 1000
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """Epoch seconds of ``10m`` / ``2h`` / ``1d`` ago, or of an ISO time (UTC if no zone)."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO like 2026-12-01T15:00, or 10m, 2h)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def update_type(update: dict[str, Any]) -> str:
    """``message``, ``callback_query``, …: the Update's one field besides ``update_id``."""
    return next((k for k in update if k != "update_id"), "")


def _int_or_none(raw: str) -> int | None:
    return int(raw) if raw.lstrip("-").isdigit() else None


def _chat(raw: str) -> int | str | None:
    return int(raw) if raw.lstrip("-").isdigit() else (raw or None)


def _entry_time(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000


def stream_event(kind: str, entry_id: Any, fields: dict[Any, Any]) -> Event:
    """The tape event of one stream entry (``kind``: ``update``, ``send`` or ``result``)."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    f = decode_fields(fields)
    if kind == "update":
        return {
            "type": "update",
            "at": float(f.get("received_at") or _entry_time(eid)),
            "bot_id": int(f.get("bot_id") or 0),
            "update_id": int(f["update_id"]),
            "chat_id": _int_or_none(f.get("chat_id", "")),
            "source": f.get("source", ""),
            "update": orjson.loads(f["update"]),
        }
    if kind == "send":
        return {
            "type": "send",
            "at": float(f.get("enqueued_at") or _entry_time(eid)),
            "bot_id": int(f.get("bot_id") or 0),
            "reply_id": f.get("reply_id", ""),
            "chat_id": _chat(f.get("chat_id", "")),
            "method": f.get("method") or "sendMessage",
            "payload": orjson.loads(f.get("payload") or "{}"),
            "update_id": _int_or_none(f.get("update_id", "")),
            "origin": f.get("origin", ""),
        }
    return {
        "type": "result",
        "at": float(f.get("at") or _entry_time(eid)),
        **({"bot_id": int(f["bot_id"])} if f.get("bot_id", "").isdigit() else {}),
        "reply_id": f.get("reply_id", ""),
        "chat_id": _chat(f.get("chat_id", "")),
        "method": f.get("method", ""),
        "ok": f.get("ok") == "1",
        "message_ids": orjson.loads(f.get("message_ids") or "[]"),
        "error_code": _int_or_none(f.get("error_code", "")),
        "description": f.get("description", ""),
        "update_id": _int_or_none(f.get("update_id", "")),
        "attempts": int(f.get("attempts") or 0),
        "latency": {
            "queue_ms": float(f.get("queue_latency_ms") or 0),
            "send_ms": float(f.get("send_latency_ms") or 0),
        },
    }


def streams_of(keys: Keys) -> list[tuple[str, str]]:
    """(event kind, stream name) of everything a tape records."""
    return (
        [("update", s) for s in keys.all_updates()]
        + [("send", s) for s in keys.all_outbound()]
        + [("result", keys.results)]
    )


@dataclass(slots=True)
class Selection:
    """Which events a recording keeps (ids as in the streams, before redaction)."""

    since: float | None = None
    until: float | None = None
    chats: frozenset[int] = frozenset()
    types: frozenset[str] = frozenset()
    bot_id: int | None = None
    _answered: set[int] = field(default_factory=set)  # update ids kept so far
    _sent: set[str] = field(default_factory=set)  # reply ids of the sends kept so far

    def keep(self, event: Event) -> bool:
        at = event["at"]
        if (self.since is not None and at < self.since) or (
            self.until is not None and at > self.until
        ):
            return False
        if self.bot_id is not None and not self._of_bot(event):
            return False
        if event["type"] == "update":
            if self.chats and event["chat_id"] not in self.chats:
                return False
            if self.types and update_type(event["update"]) not in self.types:
                return False
            self._answered.add(event["update_id"])
            return True
        if self.chats and event.get("chat_id") not in self.chats:
            return False
        if self.types and event.get("update_id") not in self._answered:
            return False  # only the answers of selected updates
        if event["type"] == "send":
            self._sent.add(event["reply_id"])
        return True

    def _of_bot(self, event: Event) -> bool:
        """Is ``event`` of ``bot_id``'s? A result written before results named their bot
        is its send's: kept when that send was (the send comes first, in time order)."""
        if "bot_id" in event:
            return bool(event["bot_id"] == self.bot_id)
        return event["type"] == "result" and event.get("reply_id") in self._sent


def _ordered(events: list[Event]) -> list[Event]:
    rank = {"update": 0, "send": 1, "result": 2}
    return sorted(events, key=lambda e: (e["at"], rank[e["type"]]))


async def read_window(
    redis: aioredis.Redis,
    keys: Keys,
    sel: Selection,
    *,
    limit: int,
    page: int = PAGE,
    on_read: Callable[[int], None] | None = None,
) -> tuple[list[Event], bool]:
    """Every selected event in the window, in time order, at most ``limit``; the flag says
    whether the limit cut the recording short. Entry ids bound the XRANGE (a send's or
    result's own time may be a little earlier than its entry's)."""
    lo = "-" if sel.since is None else f"{int((sel.since - 60) * 1000)}-0"
    hi = "+" if sel.until is None else f"{int((sel.until + 60) * 1000)}-0"
    raw: list[Event] = []
    cut = False
    for kind, stream in streams_of(keys):
        start = lo
        while True:
            batch: Any = await redis.xrange(stream, min=start, max=hi, count=page)
            for entry_id, fields in batch:
                raw.append(stream_event(kind, entry_id, fields))
            if on_read is not None:
                on_read(len(batch))
            if len(batch) < page:
                break
            last = batch[-1][0]
            last = last.decode() if isinstance(last, bytes) else last
            start = "(" + last
            if len(raw) > 4 * limit:  # bounded memory even if the filters drop most
                cut = True
                break
    kept = [e for e in _ordered(raw) if sel.keep(e)]
    return kept[:limit], cut or len(kept) > limit


async def follow(
    redis: aioredis.Redis,
    keys: Keys,
    sel: Selection,
    emit: Callable[[list[Event]], Awaitable[None] | None],
    stop: asyncio.Event,
    *,
    start: str = "$",
    page: int = 500,
    idle: float = 0.2,
) -> int:
    """Record live until ``stop``: each batch read through ``RECORDER_GROUP``, handed to
    ``emit`` in time order, then acknowledged. Returns events emitted."""
    streams = streams_of(keys)
    for _, stream in streams:
        try:
            await redis.xgroup_create(stream, RECORDER_GROUP, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
    total = 0
    try:
        while not stop.is_set():
            batch: list[Event] = []
            acks: list[tuple[str, list[Any]]] = []
            for kind, stream in streams:
                got: Any = await redis.xreadgroup(
                    RECORDER_GROUP, "recorder", {stream: ">"}, count=page
                )
                for _, entries in got or []:
                    ids = [eid for eid, _ in entries]
                    batch.extend(stream_event(kind, eid, f) for eid, f in entries)
                    acks.append((stream, ids))
            kept = [e for e in _ordered(batch) if sel.keep(e)]
            if kept:
                outcome = emit(kept)
                if outcome is not None:
                    await outcome
                total += len(kept)
            for stream, ids in acks:
                await redis.xack(stream, RECORDER_GROUP, *ids)
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), idle)
    finally:
        for _, stream in streams:
            with contextlib.suppress(ResponseError):
                await redis.xgroup_destroy(stream, RECORDER_GROUP)
    return total


# --- the `tg-gateway record` command ------------------------------------------------------


class TapeSettings(BaseSettings):
    """``TAPE_REDACT_KEY``: the pseudonyms' HMAC key. Set it to get the same pseudonyms in
    every tape of a deployment; unset, each recording generates one and forgets it."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")
    tape_redact_key: SecretStr | None = None


@dataclass(frozen=True, slots=True)
class RecordRequest:
    """What ``tg-gateway record`` was asked (parsed by the CLI, checked here)."""

    out: str
    selection: Selection
    follow: bool = False
    redact: bool = True
    rules_file: str | None = None
    limit: int = 100_000
    show_progress: bool = False  # entries read (a window) or events written (--follow)


def build_redactor(req: RecordRequest, bot_id: int, key: SecretStr | None) -> Redactor | None:
    if not req.redact:
        return None
    rules = RedactionRules()
    if req.rules_file:
        try:
            rules = RedactionRules.from_json(orjson.loads(Path(req.rules_file).read_bytes()))
        except (OSError, ValueError, TypeError) as exc:
            raise UsageError(f"--redact-rules {req.rules_file}: {exc}") from None
    rules = replace(rules, keep_ids=(*rules.keep_ids, bot_id))
    return Redactor(rules, key.get_secret_value().encode() if key else None)


async def record(
    redis: aioredis.Redis,
    keys: Keys,
    req: RecordRequest,
    *,
    bot_id: int,
    bot_username: str | None,
    key: SecretStr | None,
    stop: asyncio.Event | None = None,
    bot_name: str | None = None,
    names: Mapping[int, str] | None = None,
) -> tuple[int, bool]:
    """Write the tape ``req.out`` of ``bot_id``'s events only (0: the one bot the
    window's entries name; ``UsageError`` if they name several); its header names the
    bot (``bot_name``, else its name in ``names``). Returns (events written, whether
    ``--limit`` cut it short)."""
    redactor = build_redactor(req, bot_id, key)
    sel = replace(req.selection, bot_id=bot_id or None)
    unit = "events" if req.follow else "entries read"
    bar = progress("record", None, unit=unit) if req.show_progress else None
    try:
        return await _record(redis, keys, req, sel, redactor, bar, bot_id=bot_id,
                             bot=(bot_username, bot_name), names=names or {}, key=key,
                             stop=stop)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()


async def _record(
    redis: aioredis.Redis,
    keys: Keys,
    req: RecordRequest,
    sel: Selection,
    redactor: Redactor | None,
    bar: Progress | None,
    *,
    bot_id: int,
    bot: tuple[str | None, str | None],  # the header's username and name
    names: Mapping[int, str],
    key: SecretStr | None,
    stop: asyncio.Event | None,
) -> tuple[int, bool]:
    source = {"kind": "streams", "prefix": keys.prefix, "partitions": keys.partitions,
              "follow": req.follow}  # fmt: skip
    redaction = redactor.rules.describe() if redactor else dict(NO_REDACTION)

    def clean(e: Event) -> Event:
        e.pop("bot_id", None)
        return redactor.event(e) if redactor else e

    if not req.follow:
        on_read = bar.advance if bar is not None else None
        events, cut = await read_window(redis, keys, sel, limit=req.limit, on_read=on_read)
        if not bot_id:  # no bot asked for (nor TELEGRAM_BOT_TOKEN): the bot the entries name
            named = sorted({e["bot_id"] for e in events if e.get("bot_id")})
            if len(named) > 1:
                shown = ", ".join(map(str, named[:10]))
                raise UsageError(
                    f"the window holds entries of {len(named)} bots ({shown}): a tape is of "
                    "one bot, pick it with --bot NAME|ID"
                )
            bot_id = named[0] if named else 0
            redactor = build_redactor(req, bot_id, key)
            bot = (bot[0], bot[1] or names.get(bot_id))
        if redactor:
            redactor.learn(events)
        span = (sel.since if sel.since is not None else (events[0]["at"] if events else None),
                sel.until if sel.until is not None else time.time())  # fmt: skip
        header = Header(bot_id, bot[0], source, span, redaction, bot_name=bot[1])
        return write_tape(req.out, header, [clean(e) for e in events]), cut
    start = "$" if sel.since is None else f"{int(sel.since * 1000)}-0"
    await redis.ping()  # an unreachable Redis fails before the tape file exists
    live: tuple[float | None, float | None] = (sel.since or time.time(), None)
    header = Header(bot_id, bot[0], source, live, redaction, bot_name=bot[1])
    with TapeWriter(req.out, header) as writer:

        def emit(batch: list[Event]) -> None:
            writer.write_all(clean(e) for e in batch)
            writer.flush()
            if bar is not None:
                bar.advance(len(batch))

        await follow(redis, keys, sel, emit, stop or asyncio.Event(), start=start)
        return writer.count, False
