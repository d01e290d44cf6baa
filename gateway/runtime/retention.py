"""Retention: the stream trims that never lose work (``safe_trim_id``, ``trim_stream``)."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def safe_trim_id(redis: aioredis.Redis, stream: str, retention_s: float) -> str | None:
    """The MINID below which every entry is older than ``retention_s`` **and** delivered to
    and acknowledged by every consumer group of ``stream``; None if nothing may go.

    Unread entries (after a group's last-delivered id) and pending ones (in a group's PEL)
    are never below it, so trimming to it never loses work (MAXLEN ~ can).
    """
    now_ms = int(time.time() * 1000)
    bound = (now_ms - int(retention_s * 1000), 0)
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return None
    for group in groups:
        name = group["name"]
        last = _id_tuple(group["last-delivered-id"])
        bound = min(bound, (last[0], last[1] + 1))  # everything after it is unread
        if int(group["pending"]):
            summary: Any = await redis.xpending(stream, name)
            oldest = summary.get("min")
            if oldest:
                bound = min(bound, _id_tuple(oldest))
    if bound <= (0, 0):
        return None
    return f"{bound[0]}-{bound[1]}"


async def trim_stream(
    redis: aioredis.Redis,
    stream: str,
    retention_s: float,
    *,
    groups: bool = True,
    approximate: bool = True,
) -> int:
    """Trim what retention allows (approximate MINID: whole nodes only, never past the id).

    With ``groups`` the bound also respects every consumer group (see ``safe_trim_id``);
    without (results stream) it is by age alone. Returns entries removed.
    """
    if retention_s <= 0:
        return 0
    if groups:
        minid = await safe_trim_id(redis, stream, retention_s)
    else:
        minid = f"{int((time.time() - retention_s) * 1000)}-0"
    if minid is None:
        return 0
    return int(await redis.xtrim(stream, minid=minid, approximate=approximate))
