"""The last hour from Redis alone (``/stats``; works with metrics off): updates in,
replies sent, lag per role, dead letters by reason, 429s.

Every read is bounded. Stream entry ids are Redis-clock milliseconds, so "the last hour"
is an XREVRANGE from the newest id down to an hour ago, at most ``SAMPLE`` entries per
stream; a stream with more is extrapolated from the sample's span (shown with ``~``).
Updates count what reached the updates streams (the ingress's XADD; parked updates
when they were moved in); replies count the ``results`` entries of sent messages;
429s are the senders' per-minute ``flood_waits`` buckets (every 429 Telegram answered)
plus results that ended with error code 429.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.core.contracts import GROUP_SENDERS, GROUP_WORKERS, Keys, decode_fields

WINDOW_S = 3600
SAMPLE = 1000  # entries read per stream at most
NOT_REPLIES = frozenset({"sendChatAction", "answerCallbackQuery"})


@dataclass(frozen=True, slots=True)
class Count:
    """A count over the window; ``approx`` when it was extrapolated from a sample."""

    value: int
    approx: bool = False

    def __str__(self) -> str:
        return f"~{self.value}" if self.approx else str(self.value)


@dataclass
class HourStats:
    updates_in: Count = Count(0)
    replies_sent: Count = Count(0)
    replies_failed: Count = Count(0)
    lag: dict[str, tuple[int | None, int]] = field(default_factory=dict)
    """Per role: (lag, pending) summed over its partitions (lag None: Redis cannot tell)."""
    dead: Counter[str] = field(default_factory=Counter)
    dead_sampled: bool = False
    flood_waits: int = 0
    results_429: int = 0


def _ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


async def _window(
    redis: aioredis.Redis, stream: str, now_ms: int
) -> tuple[list[tuple[Any, Any]], bool]:
    """The window's newest entries (at most ``SAMPLE``) and whether there were more."""
    rows: Any = await redis.xrevrange(stream, max="+", min=now_ms - WINDOW_S * 1000, count=SAMPLE)
    return list(rows), len(rows) >= SAMPLE


def _scaled(n: int, rows: list[tuple[Any, Any]], more: bool, now_ms: int) -> Count:
    """``n`` of the sample, scaled to the whole window when the sample did not cover it."""
    if not more or not rows:
        return Count(n)
    span = max(now_ms - _ms(rows[-1][0]), 1)
    return Count(round(n * WINDOW_S * 1000 / span), approx=True)


async def _role_lag(
    redis: aioredis.Redis, streams: list[str], group: str
) -> tuple[int | None, int]:
    lag: int | None = 0
    pending = 0
    for stream in streams:
        try:
            groups: Any = await redis.xinfo_groups(stream)
        except ResponseError:
            continue  # no such stream yet
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
            if name != group:
                continue
            pending += int(g.get("pending") or 0)
            part = g.get("lag")
            lag = None if lag is None or part is None else lag + int(part)
    return lag, pending


async def hour_stats(redis: aioredis.Redis, keys: Keys) -> HourStats:
    sec, usec = await redis.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    out = HourStats()
    total = 0
    approx = False
    for stream in keys.all_updates():
        rows, more = await _window(redis, stream, now_ms)
        c = _scaled(len(rows), rows, more, now_ms)
        total += c.value
        approx = approx or c.approx
    out.updates_in = Count(total, approx)
    rows, more = await _window(redis, keys.results, now_ms)
    sent = failed = r429 = 0
    for _, raw in rows:
        f = decode_fields(raw)
        if f.get("error_code") == "429":
            r429 += 1
        if f.get("method") in NOT_REPLIES:
            continue
        if f.get("ok") == "1":
            sent += 1
        else:
            failed += 1
    out.replies_sent = _scaled(sent, rows, more, now_ms)
    out.replies_failed = _scaled(failed, rows, more, now_ms)
    out.results_429 = _scaled(r429, rows, more, now_ms).value
    out.lag["workers"] = await _role_lag(redis, keys.all_updates(), GROUP_WORKERS)
    out.lag["senders"] = await _role_lag(redis, keys.all_outbound(), GROUP_SENDERS)
    rows, out.dead_sampled = await _window(redis, keys.dead, now_ms)
    for _, raw in rows:
        f = decode_fields(raw)
        out.dead[f.get("reason") or "?"] += 1
    minute = now_ms // 60_000
    pipe = redis.pipeline(transaction=False)  # sixty keys; on a cluster, several nodes
    for m in range(minute - 59, minute + 1):
        pipe.get(keys.counter_minute("flood_waits", m))
    out.flood_waits = sum(int(v or 0) for v in await pipe.execute())
    return out


def render_stats(st: HourStats) -> str:
    def lag(role: str) -> str:
        value, pending = st.lag.get(role, (None, 0))
        return f"{role} {'?' if value is None else value} (pending {pending})"

    dead_total = sum(st.dead.values())
    dead = f"{'≥' if st.dead_sampled else ''}{dead_total}"
    if st.dead:
        dead += ": " + ", ".join(f"{r} {n}" for r, n in st.dead.most_common())
    lines = [
        "Last hour",
        f"updates in: {st.updates_in}",
        f"replies sent: {st.replies_sent} (failed: {st.replies_failed})",
        f"lag now: {lag('workers')}; {lag('senders')}",
        f"dead letters: {dead}",
        f"429s: {st.flood_waits + st.results_429}",
    ]
    if st.updates_in.approx or st.replies_sent.approx:
        lines.append(f"~: estimated from the newest {SAMPLE} entries per stream")
    return "\n".join(lines)
