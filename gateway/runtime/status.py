"""What ops look at: the stream layout, per role the live processes and the partitions
each owns, lag and pending per partition, consumers, dead letters.

A process is live while it heartbeats (``Keys.members``, the membership the partition
leases use): an idle process is live, a busy one that stopped is not. Without leases
(``PARTITION_LEASES=false``) nothing heartbeats, and a consumer counts as live if it
read within ``LIVE_IDLE_MS``."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.core.contracts import GROUP_SENDERS, GROUP_WORKERS, Keys, decode_fields
from gateway.runtime.bot_entries import SCAN_CAP, BotShare, bot_share
from gateway.runtime.layout import check_layout

LIVE_IDLE_MS = 30_000  # without heartbeats: a consumer that read this recently is live


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def stream_status(
    redis: aioredis.Redis,
    keys: Keys,
    *,
    heartbeats: bool = True,
    bot: tuple[int, str] | None = None,
    scan_cap: int = SCAN_CAP,
) -> dict[str, Any]:
    """A snapshot: {"layout": {...}, "roles": {role: {...}}, "dead": {...}, ...}.

    ``LayoutMismatch`` if ``keys`` address other partitions than the recorded layout.
    ``heartbeats``: processes heartbeat (partition leases on); live = heartbeating.
    ``bot`` (id, name): each partition also counts that bot's unread and pending entries
    (``bot_entries``, at most ``scan_cap`` of each read), and the dead letters are only
    that bot's."""
    recorded = await check_layout(redis, keys)
    roles: dict[str, Any] = {}
    sec, usec = await redis.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000  # membership scores are on Redis's clock
    for role, group, streams in (
        ("worker", GROUP_WORKERS, keys.all_updates()),
        ("sender", GROUP_SENDERS, keys.all_outbound()),
    ):
        partitions = []
        consumers: dict[str, dict[str, int]] = {}
        for p, stream in enumerate(streams):
            row: dict[str, Any] = {"partition": p, "stream": stream, "length": 0}
            try:
                row["length"] = int(await redis.xlen(stream))
                groups: Any = await redis.xinfo_groups(stream)
            except ResponseError:
                groups = []
            ours = next((g for g in groups if _s(g["name"]) == group), None)
            row["group"] = ours is not None
            row["lag"] = None if ours is None else ours.get("lag")
            row["pending"] = 0 if ours is None else int(ours["pending"])
            owner = await redis.get(keys.lease(role, p))
            row["owner"] = None if owner is None else _s(owner)  # None: leases off or moving
            if bot is not None:
                share = await bot_share(redis, stream, group, bot[0], cap=scan_cap)
                row["bot"] = {"unread": share.unread, "pending": share.pending,
                              "exact": share.exact}  # fmt: skip
            partitions.append(row)
            if ours is None:
                continue
            members: Any = await redis.xinfo_consumers(stream, group)
            for c in members:
                name = _s(c["name"])
                seen = consumers.setdefault(name, {"pending": 0, "idle_ms": int(c["idle"])})
                seen["pending"] += int(c["pending"])
                seen["idle_ms"] = min(seen["idle_ms"], int(c["idle"]))
        beating: Any = await redis.zrangebyscore(keys.members(role), now_ms, "+inf")
        processes: dict[str, list[int]] = {_s(m): [] for m in beating}  # heartbeating
        for row in partitions:
            if row["owner"] is not None:
                processes.setdefault(row["owner"], []).append(row["partition"])
        if heartbeats:
            live = sorted(_s(m) for m in beating)
        else:
            live = sorted(n for n, c in consumers.items() if c["idle_ms"] < LIVE_IDLE_MS)
        if bot is not None:
            total = sum((BotShare(**r["bot"]) for r in partitions), BotShare())
            by_bot = {"unread": total.unread, "pending": total.pending, "exact": total.exact}
        roles[role] = {
            **({} if bot is None else {"bot": by_bot}),
            "partitions": partitions,
            "processes": processes,
            "consumers": consumers,
            "live": live,
            "live_by": "heartbeat" if heartbeats else "recent reads",
        }
    dead: Counter[str] = Counter()
    dead_rows: Any = await redis.xrange(keys.dead)
    for _, fields in dead_rows:
        f = decode_fields(fields)
        if bot is not None and dead_bot(f) != bot[0]:
            continue
        dead[f"{f.get('stage', '?')}/{f.get('reason', '?')}"] += 1
    flood = await redis.get(keys.counter("flood_waits"))
    return {
        **({} if bot is None else {"bot": {"id": bot[0], "name": bot[1]}}),
        "layout": None if recorded is None else recorded.as_dict(),
        "roles": roles,
        "dead": dict(dead),
        "results": int(await redis.xlen(keys.results)),
        "counters": {"flood_waits": int(flood or 0)},
    }


def dead_bot(fields: dict[str, str]) -> int | None:
    """The bot of a dead letter: its original entry's ``bot_id`` (None: it names none)."""
    try:
        original = orjson.loads(fields.get("entry") or "{}")
        return int(original["bot_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def render(status: dict[str, Any]) -> str:
    lines: list[str] = []
    bot_name = status["bot"]["name"] if "bot" in status else None
    if bot_name is not None:
        lines.append(f"bot {bot_name} ({status['bot']['id']}): its entries counted per partition")
    layout = status.get("layout")
    if layout is None:
        lines.append("layout: none recorded yet (the first role to start records its own)")
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(layout["created_at"]))
        lines.append(
            f"layout: prefix '{layout['prefix']}', {layout['partitions']} partition(s), "
            f"schema {layout['schema']}, {layout['partitioner']} (recorded {when} "
            f"by {layout['created_by']})"
        )
    for role, info in status["roles"].items():
        live = info["live"]
        by = "" if info.get("live_by", "heartbeat") == "heartbeat" else f", by {info['live_by']}"
        lines.append(f"{role}s: {len(live)} live ({', '.join(live) or 'none'}{by})")
        for name, owned in sorted(info["processes"].items()):
            shown = ", ".join(map(str, owned)) or "none yet"
            lines.append(f"  process {name}: partitions {shown}")
        mine = info.get("bot")
        if mine is not None:
            lines.append(f"  bot {bot_name}: {_share(mine)}")
        head = "  partition  length      lag  pending  group    owner"
        lines.append(head if mine is None else f"{head}  (bot {bot_name})")
        for row in info["partitions"]:
            lag = "-" if row["lag"] is None else str(row["lag"])
            group = "ok" if row["group"] else "MISSING"
            p, length, pending = row["partition"], row["length"], row["pending"]
            owner = row["owner"] or "-"
            line = f"  {p:>9}  {length:>6}  {lag:>7}  {pending:>7}  {group:<7}  {owner}"
            lines.append(line if mine is None else f"{line}  ({_share(row['bot'])})")
        for name, c in sorted(info["consumers"].items()):
            lines.append(f"  consumer {name}: {c['pending']} pending, idle {c['idle_ms']} ms")
    dead = status["dead"]
    total = sum(dead.values())
    of = "" if bot_name is None else f" of bot {bot_name}"
    lines.append(
        f"dead letters{of}: {total}" + "".join(f"\n  {k}: {v}" for k, v in sorted(dead.items()))
    )
    every = "" if bot_name is None else " (every bot's)"
    lines.append(
        f"results: {status['results']}; 429 flood waits: {status['counters']['flood_waits']}"
        + every
    )
    return "\n".join(lines)


def _share(share: dict[str, Any]) -> str:
    """``3 unread, 1 pending``; ``≥`` before counts a capped scan only bounds."""
    at_least = "" if share["exact"] else "≥"
    return f"{at_least}{share['unread']} unread, {at_least}{share['pending']} pending"
