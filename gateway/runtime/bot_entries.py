"""One bot's share of a stream partition (issue 15): its entries a consumer group has not
read yet (after the group's last-delivered id) and those read and not acknowledged (the
group's pending list), found by reading each entry's ``bot_id`` field.

Streams are partitioned by (bot, chat), so a partition holds many bots' entries and
Redis keeps no count per bot: this reads them. Bounded: at most ``cap`` unread entries
and ``cap`` pending ones are read per partition, in pages; past that the count is a
lower bound (``exact`` False). ``tg-gateway streams --bot`` shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

SCAN_CAP = 10_000  # entries read per partition, unread and pending each
PAGE = 500


@dataclass(frozen=True, slots=True)
class BotShare:
    """One bot's entries in a partition, for one group."""

    unread: int = 0
    pending: int = 0
    exact: bool = True  # False: a cap was reached, the counts are lower bounds

    def __add__(self, other: BotShare) -> BotShare:
        return BotShare(
            self.unread + other.unread, self.pending + other.pending, self.exact and other.exact
        )


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _of(fields: Any, want: bytes) -> bool:
    got = fields.get(b"bot_id", fields.get("bot_id"))
    return (got.encode() if isinstance(got, str) else got) == want


async def bot_share(
    redis: aioredis.Redis,
    stream: str,
    group: str,
    bot_id: int,
    *,
    cap: int = SCAN_CAP,
    page: int = PAGE,
) -> BotShare:
    """``bot_id``'s unread and pending entries of ``stream`` for ``group`` (none: no such
    stream or group)."""
    want = str(bot_id).encode()
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:
        return BotShare()
    ours = next((g for g in groups if _s(g["name"]) == group), None)
    if ours is None:
        return BotShare()
    unread, exact = 0, True
    start, seen = f"({_s(ours['last-delivered-id'])}", 0
    while True:
        asked = min(page, cap - seen)
        rows: Any = await redis.xrange(stream, min=start, count=asked)
        seen += len(rows)
        unread += sum(_of(fields, want) for _, fields in rows)
        if len(rows) < asked:
            break  # the end of the stream
        if seen >= cap:
            exact = False  # more may follow: a lower bound
            break
        start = f"({_s(rows[-1][0])}"
    pending = 0
    if int(ours["pending"]):
        listed: Any = await redis.xpending_range(stream, group, "-", "+", cap)
        exact = exact and int(ours["pending"]) <= cap
        ids = [_s(row["message_id"]) for row in listed]
        for i in range(0, len(ids), page):
            pipe = redis.pipeline(transaction=False)
            for entry_id in ids[i : i + page]:
                pipe.xrange(stream, min=entry_id, max=entry_id)
            for got in await pipe.execute():
                pending += sum(_of(fields, want) for _, fields in got)  # trimmed: none
    return BotShare(unread, pending, exact)
