"""What ``tg-gateway bots`` does to Redis: the registry's records, read and written as a
compare-and-set (``PUT_BOT``), and the scan that tells how many entries of a bot are still
unread or pending in the streams (``BotEntries``: ``bots remove`` waits for zero)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.core.bots import BotSpec, BotSpecError
from gateway.core.contracts import GROUP_SENDERS, GROUP_WORKERS, Keys
from gateway.core.errors import GatewayError
from gateway.runtime.scripts import PUT_BOT

SCAN_BATCH = 500  # entries per XRANGE / XPENDING call: bounded reads of a long backlog


class RecordChanged(GatewayError):
    """A bot's record changed between the read and the write (another `bots` command ran):
    nothing was written; run the command again."""


@dataclass(frozen=True, slots=True)
class Stored:
    """One field of ``Keys.bots``: the raw record (what a compare-and-set compares with)
    and the bot it holds (None: it does not parse; the roles skip it too)."""

    raw: bytes
    bot: BotSpec | None
    error: str = ""


async def read_records(redis: aioredis.Redis, keys: Keys) -> dict[str, Stored]:
    """Every record of the registry hash, by field (the bot id as text)."""
    raw: dict[Any, Any] = await redis.hgetall(keys.bots)
    out: dict[str, Stored] = {}
    for f, value in raw.items():
        name = f.decode() if isinstance(f, bytes) else str(f)
        blob = value if isinstance(value, bytes) else str(value).encode()
        try:
            out[name] = Stored(blob, BotSpec.from_record(orjson.loads(blob), "redis"))
        except (orjson.JSONDecodeError, BotSpecError) as exc:
            out[name] = Stored(blob, None, str(exc))
    return out


async def put_record(
    redis: aioredis.Redis, keys: Keys, bot: BotSpec, *, expected: bytes | None, delete: bool = False
) -> str | None:
    """Write (or ``delete``) ``bot``'s record if the field still holds ``expected`` (None:
    no record). Returns None when written, else what holds the name or path key
    (``"name 123"``); ``RecordChanged`` when the record is not the one read."""
    new = b"" if delete else orjson.dumps(bot.to_record())
    args = (str(bot.bot_id), expected or b"", new, bot.name, bot.path_key)
    reply: Any = await PUT_BOT.run(redis, [keys.bots], args)
    status, what = int(reply[0]), _text(reply[1])
    if status == 1:
        return None
    if what == "changed":
        raise RecordChanged(
            f"bot {bot.name!r}: its record changed while this command ran; run it again"
        )
    return f"{what} {_text(reply[2])}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Seen:
    """What one stream's scan knows: entry ids are immutable, so an entry read once need
    not be read again (``ours``: the bot's entries; every entry in ``(start, upto]`` read)."""

    start: str = "0-0"  # the group's last-delivered id at the first scan
    upto: str = "0-0"
    ours: set[str] = field(default_factory=set)
    classified: dict[str, bool] = field(default_factory=dict)  # pending ids read one by one


def _after(entry_id: str) -> str:
    return f"({entry_id}"


def _id(value: object) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


class BotEntries:
    """Counts a bot's entries that a role has still to handle: in every updates stream
    (group ``workers``) and outbound stream (group ``senders``), those after the group's
    last-delivered id (unread) and those pending; in the parking streams, all. Each call
    reads only what is new since the last one (in ``SCAN_BATCH`` batches), plus the
    pending list."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, bot_id: int) -> None:
        self._redis = redis
        self._bot = str(bot_id).encode()
        self._streams = [(s, GROUP_WORKERS) for s in keys.all_updates()]
        self._streams += [(s, GROUP_SENDERS) for s in keys.all_outbound()]
        self._parked = keys.all_parked()
        self._seen: dict[str, _Seen] = {}

    async def count(self) -> dict[str, int]:
        """Per stream, how many of the bot's entries are unread or pending (none: {})."""
        left: dict[str, int] = {}
        for stream, group in self._streams:
            n = await self._left_in(stream, group)
            if n:
                left[stream] = n
        for stream in self._parked:
            n = await self._parked_left(stream)
            if n:
                left[stream] = n
        return left

    async def _left_in(self, stream: str, group: str) -> int:
        try:
            groups: Any = await self._redis.xinfo_groups(stream)
        except ResponseError:  # no such stream
            return 0
        ours_group = next((g for g in groups if _text(g["name"]) == group), None)
        delivered = "0-0" if ours_group is None else _text(ours_group["last-delivered-id"])
        seen = self._seen.setdefault(stream, _Seen(delivered, delivered))
        await self._read_new(stream, seen)
        unread = {i for i in seen.ours if _id(i) > _id(delivered)}
        pending = set() if ours_group is None else await self._pending_ours(stream, group, seen)
        seen.ours -= {i for i in seen.ours if i not in unread and i not in pending}
        return len(unread | pending)

    async def _read_new(self, stream: str, seen: _Seen) -> None:
        while True:
            batch: Any = await self._redis.xrange(stream, _after(seen.upto), "+", SCAN_BATCH)
            for entry_id, fields in batch:
                if fields.get(b"bot_id") == self._bot:
                    seen.ours.add(_text(entry_id))
            if batch:
                seen.upto = _text(batch[-1][0])
            if len(batch) < SCAN_BATCH:
                return

    async def _pending_ours(self, stream: str, group: str, seen: _Seen) -> set[str]:
        """The pending entries of the bot: those the scan read are known; the others
        (delivered before the first scan, or since this one's read) are read once each,
        in one pipeline."""
        ids: list[str] = []
        start = "-"
        while True:
            batch: Any = await self._redis.xpending_range(stream, group, start, "+", SCAN_BATCH)
            ids += [_text(p["message_id"]) for p in batch]
            if len(batch) < SCAN_BATCH:
                break
            start = _after(ids[-1])
        scanned = (_id(seen.start), _id(seen.upto))
        unknown = [
            i
            for i in ids
            if i not in seen.ours
            and i not in seen.classified
            and not scanned[0] < _id(i) <= scanned[1]
        ]
        if unknown:
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in unknown:
                    pipe.xrange(stream, i, i, 1)
                found: list[Any] = await pipe.execute()
            for i, rows in zip(unknown, found, strict=True):
                seen.classified[i] = bool(rows) and rows[0][1].get(b"bot_id") == self._bot
        live = set(ids)
        seen.classified = {i: v for i, v in seen.classified.items() if i in live}
        return {i for i in ids if i in seen.ours or seen.classified.get(i)}

    async def _parked_left(self, stream: str) -> int:
        """Parked updates are moved (XADD elsewhere, XDEL here): read the stream whole
        (usually empty; capped at ``PARK_CAP``)."""
        if not int(await self._redis.xlen(stream)):
            return 0
        n, start = 0, "-"
        while True:
            batch: Any = await self._redis.xrange(stream, start, "+", SCAN_BATCH)
            n += sum(1 for _, fields in batch if fields.get(b"bot_id") == self._bot)
            if len(batch) < SCAN_BATCH:
                return n
            start = _after(_text(batch[-1][0]))
