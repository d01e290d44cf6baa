"""Dead letters (written by the consumer's fenced finish): listed, shown, requeued (back where they
came from), purged; ``newest`` is the bounded read of ``/admin``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from gateway.core.contracts import Keys, decode_fields
from gateway.core.errors import UsageError
from gateway.runtime.streams import fields_arg, is_cluster

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadEntry:
    id: str
    stage: str
    reason: str
    stream: str
    entry_id: str
    attempts: int
    error: str
    at: float
    entry: dict[str, str]

    @classmethod
    def parse(cls, entry_id: bytes | str, raw: dict[Any, Any]) -> DeadEntry:
        f = decode_fields(raw)
        try:
            original = orjson.loads(f.get("entry") or "{}")
        except orjson.JSONDecodeError:
            original = {}
        return cls(
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            stage=f.get("stage", ""),
            reason=f.get("reason", ""),
            stream=f.get("stream", ""),
            entry_id=f.get("entry_id", ""),
            attempts=int(f.get("attempts") or 0),
            error=f.get("error", ""),
            at=float(f.get("at") or 0),
            entry={str(k): str(v) for k, v in original.items()}
            if isinstance(original, dict)
            else {},
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stage": self.stage,
            "reason": self.reason,
            "stream": self.stream,
            "entry_id": self.entry_id,
            "attempts": self.attempts,
            "error": self.error,
            "at": self.at,
            "entry": self.entry,
        }


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an operation touches; nothing is selected by default."""

    ids: tuple[str, ...] = ()
    stage: str | None = None
    reason: str | None = None
    older_than: float | None = None  # seconds
    all: bool = False
    bot_id: int | None = None  # the original entry's bot_id (``--bot``)

    @property
    def empty(self) -> bool:
        no_filter = self.stage is None and self.reason is None and self.older_than is None
        return not self.ids and not self.all and no_filter and self.bot_id is None

    def matches(self, e: DeadEntry, now: float) -> bool:
        if self.ids and e.id not in self.ids:
            return False
        if self.stage is not None and e.stage != self.stage:
            return False
        if self.reason is not None and e.reason != self.reason:
            return False
        if self.bot_id is not None and e.entry.get("bot_id") != str(self.bot_id):
            return False
        return self.older_than is None or now - e.at >= self.older_than


async def scan(redis: aioredis.Redis, keys: Keys, batch: int = 500) -> list[DeadEntry]:
    """Every dead letter, oldest first."""
    out: list[DeadEntry] = []
    start = "-"
    while True:
        rows: Any = await redis.xrange(keys.dead, min=start, count=batch)
        for entry_id, raw in rows:
            out.append(DeadEntry.parse(entry_id, raw))
        if len(rows) < batch:
            return out
        last = rows[-1][0].decode()
        start = f"({last}"


async def newest(
    redis: aioredis.Redis, keys: Keys, count: int, *, up_to: str = "+"
) -> list[DeadEntry]:
    """The newest ``count`` dead letters with ids up to ``up_to``, newest first (a
    bounded read, unlike ``scan``)."""
    rows: Any = await redis.xrevrange(keys.dead, max=up_to, count=count)
    return [DeadEntry.parse(entry_id, raw) for entry_id, raw in rows]


async def select(redis: aioredis.Redis, keys: Keys, sel: Selection) -> list[DeadEntry]:
    now = time.time()
    return [e for e in await scan(redis, keys) if sel.matches(e, now)]


async def requeue(redis: aioredis.Redis, keys: Keys, entries: Iterable[DeadEntry]) -> int:
    """Put each entry back on the stream it came from and remove it from the dead stream.

    The XADD and XDEL of one entry run in one MULTI, so an entry is never in both or
    neither. On a Redis Cluster (two slots) the XADD goes first: a crash in between leaves
    it in both, and requeueing it again sends a second copy, which the sent and handed
    markers and the ``Idempotency-Key`` make harmless. If any entry's stream is not one of
    this layout's (another ``STREAM_PREFIX`` or ``PARTITIONS``), none is requeued.
    """
    # The results stream too: a delivery receipt given up on goes back there, and its
    # readers dedupe the identical copy by reply_id and at (README, Streams).
    allowed = set(keys.all_updates()) | set(keys.all_outbound()) | {keys.results}
    chosen = list(entries)
    refused = [e for e in chosen if e.stream not in allowed or not e.entry]
    if refused:
        e = refused[0]
        raise UsageError(
            f"dlq requeue: {e.id} cannot go back to {e.stream!r} (not a stream of "
            f"STREAM_PREFIX={keys.prefix} PARTITIONS={keys.partitions}); {len(refused)} such "
            "entr(ies), nothing requeued: narrow the selection or purge them"
        )
    done = 0
    for e in chosen:
        if is_cluster(redis):
            await redis.xadd(e.stream, fields_arg(e.entry))
            await redis.xdel(keys.dead, e.id)
        else:
            pipe = redis.pipeline(transaction=True)
            pipe.xadd(e.stream, fields_arg(e.entry))
            pipe.xdel(keys.dead, e.id)
            await pipe.execute()
        done += 1
    return done


async def purge(redis: aioredis.Redis, keys: Keys, entries: Iterable[DeadEntry]) -> int:
    ids = [e.id for e in entries]
    if not ids:
        return 0
    return int(await redis.xdel(keys.dead, *ids))
