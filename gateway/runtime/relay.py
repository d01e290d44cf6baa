"""The relay: a finish's entries for a stream on another Redis Cluster node, kept in the
partition's own slot while that node does not answer, moved there once it does.

A finish script (``scripts.FINISH``) can only write keys of its partition's slot;
``results`` and ``dead`` are elsewhere. Those entries are XADDed first, directly, bounded
by ``DIRECT_TIMEOUT``. When that fails transiently (or the stream is known to be away,
see ``direct_ok``), they go into the partition's relay stream (``Keys.relay``) instead,
inside the finish script: atomically with the ack, so nothing is lost and nothing waits
for the other node. At most ``RELAY_CAP`` entries per partition and role: a finish that
would pass it is refused (-2) and retried in place, so only that partition waits.

The mover runs in the process holding the partition's lease (every consumer of the role
when leases are off): every ``MOVE_EVERY`` seconds it XADDs each relay entry to its
target, then XDELs the moved ones from the relay; its XADDs are the probe that tells the
finishes to write directly again. A crash (or a lost reply) between the XADD and the
XDEL moves the entry again: the target then holds two identical copies (same fields,
including ``at``). Readers dedupe results by ``reply_id`` (with ``at`` for an entry
requeued from the dead letters and finished again), dead letters by ``stream`` +
``entry_id``. A direct write that timed out may have landed too: its relay copy is then
such a repeat. Moved entries reach their stream later than, and not in the order of,
the direct ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis

from gateway.runtime.redis_errors import as_connection_error, is_transient, reraise_cancel
from gateway.runtime.slots import SlotRefresher

log = logging.getLogger(__name__)

RELAY_FIELD = "_relay_to"
"""The field naming a relay entry's target stream; the other fields are the entry's."""
RELAY_CAP = 10_000
"""Relay entries per partition and role (a result is ~0.4 kB: ~4 MB per partition)."""
DIRECT_TIMEOUT = 0.5
"""Seconds a direct write to another node may take before its entry goes to the relay."""
MOVE_EVERY = 0.5
"""Seconds between the mover's rounds (and so between tries of a stream that is away)."""
MOVE_PAGE = 100
MOVE_TIMEOUT = 2.0  # one XRANGE or XDEL on the partition's own node
SWEEP_EVERY = 30.0
"""Seconds between looks at every movable partition's relay (entries left by others)."""


def relay_fields(target: str, fields: Mapping[str, str | bytes]) -> dict[str, str | bytes]:
    """A relay entry: ``fields`` and the stream they are for (pure)."""
    return {RELAY_FIELD: target, **fields}


def unrelay(fields: Mapping[bytes, bytes]) -> tuple[str | None, dict[bytes, bytes]]:
    """(target stream, the entry's own fields) of a relay entry; None: not one (pure)."""
    target = fields.get(RELAY_FIELD.encode())
    own = {k: v for k, v in fields.items() if k != RELAY_FIELD.encode()}
    return (target.decode() if target else None), own


def _failure(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or is_transient(exc)


class Relay:
    """One consumer's relay: which target streams are away, which partitions' relays may
    hold entries (``dirty``), and the mover (``run``)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        role: str,
        key: Callable[[int], str],
        partitions: int,
        movable: Callable[[int], bool],
        cap: int = RELAY_CAP,
    ) -> None:
        self.redis = redis
        self.role = role
        self.key = key
        self.cap = cap
        self.partitions = partitions
        self.movable = movable
        self.dirty: set[int] = set(range(partitions))  # entries may be left from before
        self.relayed = 0  # entries this process wrote to a relay
        self.moved = 0  # entries this process moved to their stream
        self._away_until: dict[str, float] = {}  # target -> next direct try (monotonic)
        self._undeleted: dict[int, list[bytes]] = {}  # moved, XDEL not confirmed yet
        self._bad: set[bytes] = set()  # relay entries without a target (logged once)
        self._slots = SlotRefresher(redis)

    def direct_ok(self, target: str) -> bool:
        """Is a direct write to ``target`` worth a try now? Not while it is known to be
        away: then one try per ``MOVE_EVERY`` (the mover's, or one finish's)."""
        until = self._away_until.get(target)
        return until is None or time.monotonic() >= until

    async def write_direct(self, target: str, fields: Mapping[str, str | bytes]) -> bool:
        """XADD ``fields`` to ``target``; False if it failed transiently or did not answer
        in time (the caller relays the entry), or if ``target`` is away."""
        if not self.direct_ok(target):
            return False
        if target in self._away_until:  # this write is the probe: the others relay meanwhile
            self._away_until[target] = time.monotonic() + DIRECT_TIMEOUT + MOVE_EVERY
        try:
            await self._xadd(target, fields)
        except Exception as exc:
            if not _failure(exc):
                raise
            self._away(target, exc)
            await self._slots.after_failure()
            return False
        self._back(target)
        return True

    def note_relayed(self, p: int, count: int) -> None:
        """``count`` entries of partition ``p`` went to its relay (the finish succeeded)."""
        self.relayed += count
        self.dirty.add(p)

    async def _xadd(self, target: str, fields: Mapping[Any, Any]) -> None:
        async with asyncio.timeout(DIRECT_TIMEOUT):
            await self.redis.xadd(target, dict(fields))

    def _away(self, target: str, exc: BaseException) -> None:
        if target not in self._away_until:
            log.warning(
                "%s: %s does not answer (%s); its entries go to the partitions' relays",
                self.role,
                target,
                type(as_connection_error(exc)).__name__,
            )
        self._away_until[target] = time.monotonic() + MOVE_EVERY

    def _back(self, target: str) -> None:
        if self._away_until.pop(target, None) is not None:
            log.warning("%s: %s answers again; written directly", self.role, target)

    async def run(self, stop: asyncio.Event) -> None:
        """Move relay entries of the movable partitions until ``stop``."""
        last_sweep = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - last_sweep >= SWEEP_EVERY:
                last_sweep = time.monotonic()
                self.dirty.update(range(self.partitions))
            for p in sorted(self.dirty):
                if stop.is_set():
                    return
                if not self.movable(p):
                    continue
                try:
                    await self.move(p)
                except Exception as exc:
                    reraise_cancel()  # a cancel that asyncio.timeout turned into TimeoutError
                    self.dirty.add(p)  # the next round tries again
                    if _failure(exc):
                        await self._slots.after_failure()
                    if not _failure(exc):  # a bug, not the node: say so, keep the role up
                        log.exception("%s: moving relay entries of partition %d", self.role, p)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=MOVE_EVERY)

    async def move(self, p: int) -> int:
        """Move partition ``p``'s relay entries to their streams: XADD each, then XDEL the
        moved ones. Entries whose stream is away stay (tried next round)."""
        key = self.key(p)
        pending = self._undeleted.get(p)
        if pending:
            async with asyncio.timeout(MOVE_TIMEOUT):
                await self.redis.xdel(key, *pending)
            del self._undeleted[p]
        self.dirty.discard(p)  # before the read: a finish relaying after it sets it again
        total = 0
        start = "-"
        while True:
            async with asyncio.timeout(MOVE_TIMEOUT):  # a failure: run() sets p dirty again
                rows: Any = await self.redis.xrange(key, min=start, count=MOVE_PAGE)
            if not rows:
                break
            moved: list[bytes] = []
            away: set[str] = set()
            for entry_id, fields in rows:
                target, own = unrelay(fields)
                if target is None:  # not written by a finish: left for an operator
                    if entry_id not in self._bad:
                        self._bad.add(entry_id)
                        log.error(
                            "%s: relay entry %r of %s has no target", self.role, entry_id, key
                        )
                    continue
                if target in away:
                    continue
                try:
                    await self._xadd(target, own)
                except Exception as exc:
                    if not _failure(exc):
                        raise
                    self._away(target, exc)
                    away.add(target)
                    await self._slots.after_failure()
                    continue
                self._back(target)
                moved.append(entry_id)
            if moved:
                self._undeleted[p] = moved  # a failed XDEL is redone, never re-moved
                async with asyncio.timeout(MOVE_TIMEOUT):
                    await self.redis.xdel(key, *moved)
                del self._undeleted[p]
                total += len(moved)
            if away:  # their stream is away: look again next round
                self.dirty.add(p)
                break
            if len(moved) < len(rows):  # entries without a target stay: read past them
                start = "(" + rows[-1][0].decode()
            if len(rows) < MOVE_PAGE:
                break
        if total:
            self.moved += total
            log.info("%s: moved %d relay entries of partition %d", self.role, total, p)
        return total
