"""What the sender writes and reads outside the fenced finish: sent markers, written the
moment Telegram took a part, and the best-effort cache keys (blocked chats, migrations).
docs/reliability.md, "What is written outside the fenced finish", says why."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError

from gateway.core.backoff import backoff
from gateway.runtime.batching import Coalescer
from gateway.runtime.consumer import Write
from gateway.runtime.redis_errors import is_transient
from gateway.runtime.slots import SlotRefresher
from gateway.runtime.streams import is_cluster

log = logging.getLogger(__name__)

SENT_TTL = 7 * 86_400
BLOCKED_TTL = 30 * 86_400
MIGRATION_TTL = 90 * 86_400
MARKER_RETRY = 60.0
"""Seconds a sent part's marker write is retried in place (its partition's node away)."""
CACHE_TIMEOUT = 0.5
"""Seconds a read or write of a cache key (a blocked chat, a migration) may take; past
it, or on a transient error, it is skipped (``Marks.cached``)."""
CACHE_RETRY = 1.0
"""Seconds a node whose cache call failed is not asked again (its keys read as unknown)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FirstLook:
    """An entry's reads before its first part (``Marks.first_look``): its chat's
    blocked-chat mark and migration (None: unknown or not asked), and its first part's
    sent marker if it was read with them (``sent_read``)."""

    blocked: int | None = None
    moved: bytes | str | None = None
    sent: bytes | str | None = None
    sent_read: bool = False


class Marks:
    """Sent markers and cache keys of one sender process."""

    def __init__(self, redis: aioredis.Redis, *, marker_retry: float = MARKER_RETRY) -> None:
        self.redis = redis
        self.marker_retry = marker_retry
        # Parts sent whose marker could not be written yet: marker key -> value. A retry of
        # the entry in this process finds them here and writes the marker, never resends.
        self.unmarked: dict[str, str] = {}
        self.cache_skips = 0  # cache reads and writes skipped (their node away)
        self._cache_away: dict[str, float] = {}  # node -> monotonic time of the next try
        self._slots = SlotRefresher(redis)
        self._calls = Coalescer(redis, timeout=CACHE_TIMEOUT)  # the first look's reads

    async def first_look(self, marker: str, blocked: str | None, migrated: str | None) -> FirstLook:
        """An entry's first reads in one round trip: the blocked-chat mark (``blocked``)
        and the migration (``migrated``) of its chat, and its first part's sent marker.
        All three are in the chat's partition's slot, so on a Redis Cluster they go to one
        node; the cache keys are best effort as in ``cached``. If they cannot be read
        (that node away or slow: it is then skipped for ``CACHE_RETRY``), the marker is
        left to ``sent_value``, which reads it on its own and fails as it always did."""
        keys = [k for k in (blocked, migrated) if k is not None]
        if not keys:
            return FirstLook()
        node = self._node_of(keys[0])
        if marker in self.unmarked or self._cache_away.get(node, 0.0) > time.monotonic():
            # A mark to write first (sent_value), or the node is skipped: one at a time.
            is_blocked = None
            if blocked is not None:
                is_blocked = await self.cached("blocked-chat mark", self.redis.exists, blocked)
            moved = None
            if migrated is not None:
                moved = await self.cached("migration", self.redis.get, migrated)
            return FirstLook(is_blocked, moved)
        commands: list[tuple[str, str]] = [("GET", marker)]
        if blocked is not None:
            commands.append(("EXISTS", blocked))
        if migrated is not None:
            commands.append(("GET", migrated))
        try:
            replies = await self._calls.run(*commands)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            await self._skip_node(node, "blocked-chat mark and migration", exc)
            return FirstLook()
        self._node_back(node, "first look")
        sent, rest = replies[0], replies[1:]
        is_blocked = int(rest.pop(0)) if blocked is not None else None
        moved = rest.pop(0) if migrated is not None else None
        return FirstLook(is_blocked, moved, sent, sent_read=True)

    async def sent_value(self, marker: str) -> bytes | str | None:
        """A cheap early look at a part's marker (no budget is spent on a part already
        sent): its value, or None. A part this process sent but could not mark yet gets
        its marker now. The check that counts is the fenced one right before the request
        (``PartSender._gate``)."""
        pending = self.unmarked.get(marker)
        if pending is not None:
            await self.mark_sent(marker, pending)
            return pending.encode()
        value: bytes | str | None = await self.redis.get(marker)
        return value

    async def mark_sent(self, marker: str, value: str) -> None:
        """Write a sent part's marker, retried in place for up to ``marker_retry`` seconds
        while its partition's node is away (a restart, a failover): the entry stays in its
        lane, so it is not redone (and resent) once the node is back. Past the bound the
        error goes up and the entry is retried; this process still remembers the part
        (``unmarked``) and only writes its marker then. The marker is written even if
        the lease moved meanwhile: it states a fact, and it stops the next owner from
        sending the part again."""
        self.unmarked[marker] = value
        deadline = time.monotonic() + self.marker_retry
        attempt = 0
        while True:
            try:
                await self.redis.set(marker, value, ex=SENT_TTL)
            # AttributeError/TypeError: redis-py 8.1 on a connection closed under the
            # command (redis/redis-py#4287), a node going away like any other.
            except (RedisError, OSError, AttributeError, TypeError) as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                delay = min(backoff(attempt, base=0.05, cap=0.5), left)
                attempt += 1
                if attempt == 1:
                    log.warning("sent marker %s not written (%s); retrying", marker, exc)
                await asyncio.sleep(delay)
                continue
            self.unmarked.pop(marker, None)
            return

    def deferred(self, marker: str, value: str) -> Write:
        """A sent part's marker as a ``Write`` of the entry's finish: it goes in the
        finish's round trip instead of one of its own (the entry's last part; nothing is
        sent after it before the finish). Remembered in ``unmarked`` until Redis took it,
        so a retry of the entry in this process writes it and never resends. A finish
        whose try fails falls back to ``mark_sent`` at once (retried in place, as the
        marker of a part with more to come), whatever becomes of the entry next."""
        self.unmarked[marker] = value
        return Write(
            ("SET", marker, value, "EX", SENT_TTL),
            written=lambda: self._took(marker, value),
            fallback=lambda: self.mark_sent(marker, value),
        )

    def _took(self, marker: str, value: str) -> None:
        if self.unmarked.get(marker) == value:
            del self.unmarked[marker]

    async def cached(
        self, what: str, command: Callable[..., Awaitable[T]], key: str, *args: Any, **kw: Any
    ) -> T | None:
        """A read or write of a cache key, best effort: its answer, or None ("unknown"; a
        write skipped) when its node fails transiently or does not answer within
        ``CACHE_TIMEOUT``. That node is then not asked for ``CACHE_RETRY`` seconds, so a
        send never waits for it more than once a second."""
        node = self._node_of(key)
        now = time.monotonic()
        if self._cache_away.get(node, 0.0) > now:
            self.cache_skips += 1
            return None
        try:
            async with asyncio.timeout(CACHE_TIMEOUT):
                answer = await command(key, *args, **kw)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            await self._skip_node(node, what, exc)
            return None
        self._node_back(node, what)
        return answer

    async def _skip_node(self, node: str, what: str, exc: BaseException) -> None:
        """A cache read or write failed on ``node``: not asked for ``CACHE_RETRY``."""
        self.cache_skips += 1
        if node not in self._cache_away:
            log.warning(
                "%s not read or written (%s): skipped while its Redis node is away",
                what,
                type(exc).__name__,
            )
        self._cache_away[node] = time.monotonic() + CACHE_RETRY
        await self._slots.after_failure()

    def _node_back(self, node: str, what: str) -> None:
        if self._cache_away.pop(node, None) is not None:
            log.info("cache keys readable again (%s)", what)

    def _node_of(self, key: str) -> str:
        """The node serving ``key`` on a cluster (by slot if the map lacks it), else ''."""
        if not is_cluster(self.redis):
            return ""
        try:
            return str(self.redis.get_node_from_key(key).name)  # type: ignore[attr-defined]
        except Exception:
            return f"slot {key_slot(key.encode())}"
