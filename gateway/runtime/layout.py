"""The stream layout: what every role and tool must agree on to address the same partitions.

An update goes to partition ``crc32("<bot_id>:<chat_id>") % PARTITIONS`` (``crc32(chat_id)``
with ``STREAM_PARTITION_BY=chat``, the layout of deployments recorded before issue 15)
of ``{STREAM_PREFIX}:updates``;
a worker reads partitions ``0..PARTITIONS-1``. Two replicas with different ``PARTITIONS``
(or entry schemas) strand entries silently: nobody reads the partitions only one of them
writes. So the first process to start records the layout in Redis (``Keys.layout``,
atomically: a script that writes only if nothing is there), and every role and every tool
that addresses partitions compares its own settings with the record at start and refuses
with one line (``LayoutMismatch``, a ``ConfigError``: exit 2) if they differ.

Changing it is deliberate: drain, stop every role, ``tg-gateway layout reset`` (which
refuses while a worker or sender heartbeats or an entry is unread or pending), start with
the new value (README, Operations: "Changing the stream layout").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gateway.core.backoff import backoff
from gateway.core.contracts import GROUP_SENDERS, GROUP_WORKERS, SCHEMA, Keys
from gateway.core.errors import ConfigError
from gateway.runtime.scripts import RECORD_LAYOUT

log = logging.getLogger(__name__)

PARTITIONER = "crc32(bot:chat)"  # Keys.partitioner; "crc32" (chat alone) before issue 15
HOWTO = (
    "to change it, drain and stop every role, then run `tg-gateway layout reset` "
    '(README, "Changing the stream layout")'
)


class LayoutMismatch(ConfigError):
    """This process's settings address other partitions than the recorded layout."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The part of the settings every process must share to find each other's entries."""

    prefix: str
    partitions: int
    schema: str = SCHEMA
    partitioner: str = PARTITIONER

    @classmethod
    def of(cls, keys: Keys) -> Layout:
        return cls(keys.prefix, keys.partitions, partitioner=keys.partitioner)


@dataclass(frozen=True, slots=True)
class Recorded:
    """The layout found in Redis, with when and by whom it was recorded."""

    layout: Layout
    created_at: float
    created_by: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.layout), "created_at": self.created_at, "created_by": self.created_by}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @property
    def origin(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.created_at))
        return f"recorded {when} by {self.created_by}"

    def describe(self) -> str:
        lay = self.layout
        return (
            f"{lay.partitions} partition(s), schema {lay.schema}, {lay.partitioner} "
            f"partitioner for STREAM_PREFIX '{lay.prefix}' ({self.origin})"
        )


def whoami(role: str) -> str:
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


def parse_record(keys: Keys, raw: bytes | str) -> Recorded:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    try:
        data = json.loads(text)
        return Recorded(
            Layout(
                prefix=str(data["prefix"]),
                partitions=int(data["partitions"]),
                schema=str(data["schema"]),
                partitioner=str(data["partitioner"]),
            ),
            created_at=float(data.get("created_at") or 0.0),
            created_by=str(data.get("created_by") or "?"),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LayoutMismatch(
            f"the stream layout record {keys.layout} is unreadable ({text[:80]!r}); {HOWTO}"
        ) from None


def compare(ours: Layout, recorded: Recorded) -> None:
    """Raise ``LayoutMismatch`` (one line) unless ``ours`` is the recorded layout."""
    theirs = recorded.layout
    if ours == theirs:
        return
    if ours.prefix != theirs.prefix:
        what = f"STREAM_PREFIX='{ours.prefix}' but the layout record names '{theirs.prefix}'"
    elif ours.partitions != theirs.partitions:
        what = (
            f"PARTITIONS={ours.partitions} but this Redis holds a "
            f"{theirs.partitions}-partition layout for STREAM_PREFIX '{theirs.prefix}'"
        )
    elif ours.schema != theirs.schema:
        what = (
            f"this tg-gateway writes stream schema {ours.schema} but the layout for "
            f"STREAM_PREFIX '{theirs.prefix}' has schema {theirs.schema}"
        )
    else:
        keep = {"crc32": "chat", "crc32(bot:chat)": "bot_chat"}.get(theirs.partitioner)
        what = (
            f"this tg-gateway partitions by {ours.partitioner} but the layout for "
            f"STREAM_PREFIX '{theirs.prefix}' uses {theirs.partitioner}"
        )
        if keep is not None:  # e.g. a deployment recorded before issue 15: keep its layout
            what += f" (set STREAM_PARTITION_BY={keep} to keep it)"
    raise LayoutMismatch(f"{what} ({recorded.origin}); {HOWTO}")


async def read_layout(redis: aioredis.Redis, keys: Keys) -> Recorded | None:
    raw = await redis.get(keys.layout)
    return None if raw is None else parse_record(keys, raw)


async def check_layout(redis: aioredis.Redis, keys: Keys) -> Recorded | None:
    """Compare with the recorded layout, if any (read-only: for tools like ``streams``)."""
    recorded = await read_layout(redis, keys)
    if recorded is not None:
        compare(Layout.of(keys), recorded)
    return recorded


async def ensure_layout(redis: aioredis.Redis, keys: Keys, role: str) -> Recorded:
    """Record our layout if Redis holds none (atomically: of concurrent first starts one
    writes, the others read it), then compare. ``LayoutMismatch`` if it differs."""
    mine = Recorded(Layout.of(keys), time.time(), whoami(role))
    reply: Any = await RECORD_LAYOUT.run(redis, [keys.layout], [mine.to_json()])
    created, raw = int(reply[0]), reply[1]
    recorded = parse_record(keys, raw)
    compare(mine.layout, recorded)
    if created:
        log.info("recorded the stream layout: %s", recorded.describe())
    return recorded


async def ensure_layout_until(
    redis: aioredis.Redis, keys: Keys, role: str, stop: asyncio.Event
) -> Recorded | None:
    """``ensure_layout``, retried while Redis is away; None if ``stop`` came first."""
    attempt = 0
    while not stop.is_set():
        try:
            return await ensure_layout(redis, keys, role)
        except (RedisError, OSError) as exc:
            delay = backoff(attempt, cap=5.0)
            attempt += 1
            log.warning(
                "%s: cannot check the stream layout yet (%s); retry in %.1fs", role, exc, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    return None


# --- tg-gateway layout show|reset ----------------------------------------------------------


async def _live(redis: aioredis.Redis, keys: Keys) -> list[str]:
    sec, usec = await redis.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    live: list[str] = []
    for role in ("worker", "sender"):
        members: Any = await redis.zrangebyscore(keys.members(role), now_ms, "+inf")
        live += [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    return live


async def _undrained(redis: aioredis.Redis, keys: Keys) -> list[str]:
    """Streams of ``keys`` whose group has unread or pending entries, and parking
    streams that hold updates."""
    found: list[str] = []
    pairs = [(s, GROUP_WORKERS) for s in keys.all_updates()]
    pairs += [(s, GROUP_SENDERS) for s in keys.all_outbound()]
    for stream, group in pairs:
        try:
            groups: Any = await redis.xinfo_groups(stream)
        except ResponseError:  # no such stream
            continue
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
            if name != group:
                continue
            lag = g.get("lag")
            if lag is None:  # not computable (deletions): compare ids instead
                info: Any = await redis.xinfo_stream(stream)
                unread = info["last-generated-id"] != g["last-delivered-id"]
            else:
                unread = int(lag) > 0
            if unread or int(g["pending"]):
                found.append(stream)
    # Updates the poller parked while their partition's node was away (gateway/ingress/poller.py)
    # are not in their partition yet: moved under another layout they would be misrouted.
    found += [s for s in keys.all_parked() if int(await redis.xlen(s))]
    return found


async def reset_layout(
    redis: aioredis.Redis, keys: Keys, *, force: bool
) -> tuple[Recorded | None, Recorded]:
    """Overwrite the record with ``keys``'s layout; refuses (``LayoutMismatch``) while a
    worker or sender heartbeats or an entry of the old or new layout is unread or pending."""
    old: Recorded | None
    try:
        old = await read_layout(redis, keys)
    except LayoutMismatch:
        old = None  # unreadable: overwriting it is the fix
    if not force:
        live = await _live(redis, keys)
        if live:
            raise LayoutMismatch(
                f"layout reset: {len(live)} process(es) still heartbeat ({', '.join(live[:5])}); "
                "stop every role first (or pass --force)"
            )
        spans = {keys.partitions} | ({old.layout.partitions} if old else set())
        busy: list[str] = []
        for n in sorted(spans):
            busy += [s for s in await _undrained(redis, Keys(keys.prefix, n)) if s not in busy]
        if busy:
            raise LayoutMismatch(
                f"layout reset: {len(busy)} stream(s) still hold unread or pending entries "
                f"({', '.join(busy[:4])}); let the roles drain them first (or pass --force)"
            )
    new = Recorded(Layout.of(keys), time.time(), whoami("layout-reset"))
    await redis.set(keys.layout, new.to_json())
    return old, new


def cmd_layout(args: argparse.Namespace) -> int:
    """``tg-gateway layout show|reset``: the recorded stream layout, and changing it."""
    from gateway.core.settings import RedisSettings, load
    from gateway.runtime.streams import connect_with

    rs = load(RedisSettings)
    keys = rs.keys

    async def go() -> int:
        redis = connect_with(rs)
        try:
            if args.action == "reset":
                old, _ = await reset_layout(redis, keys, force=args.force)
                was = f"was {old.layout.partitions}" if old else "none was recorded"
                print(
                    f"stream layout of STREAM_PREFIX '{keys.prefix}' set to "
                    f"{keys.partitions} partition(s) ({was}); start every role with "
                    f"PARTITIONS={keys.partitions}"
                )
                return 0
            recorded = await read_layout(redis, keys)
            if args.json:
                print(json.dumps(None if recorded is None else recorded.as_dict(), indent=2))
                return 0
            if recorded is None:
                print(
                    f"no stream layout recorded for STREAM_PREFIX '{keys.prefix}' "
                    f"(key {keys.layout}); the first role to start records its own"
                )
                return 0
            print(f"stream layout: {recorded.describe()}")
            try:
                compare(Layout.of(keys), recorded)
                print(f"these settings (PARTITIONS={keys.partitions}) match it")
            except LayoutMismatch as exc:
                print(f"these settings differ: {str(exc).split(' (recorded')[0]}", file=sys.stderr)
            return 0
        finally:
            await redis.aclose()

    return asyncio.run(go())
