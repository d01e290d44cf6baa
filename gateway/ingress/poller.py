"""Long polling: getUpdates → updates stream; the offset advances only after Redis has the batch.

"Has" means in its partition's stream, or *parked*: a partition whose Redis node cannot
take an update (on a cluster, its node is down) gets it appended to a parking stream on
another node (``Keys.parked``), so the offset moves on and every other partition keeps
being served. While a partition has parked updates its new ones are parked behind them,
in the same stream; a mover task per parked partition publishes them in order, with the
same dedupe keys as a direct publish, once the partition's node answers, deletes
them, and only then lets the partition's updates go direct again. A poller that starts
first looks for updates an earlier one left parked and moves them before those
partitions' new ones. Where neither the partition nor a parking stream takes an update,
the offset is held (as on a single Redis that is down) and the batch retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.core.backoff import backoff
from gateway.core.contracts import extract_update_ids, update_fields
from gateway.core.errors import RedisUnavailable
from gateway.ingress.observe import IngressMetrics
from gateway.runtime.redis_errors import reraise_cancel
from gateway.runtime.streams import Fields, UpdatePublisher
from gateway.telegram.answers import Dead, Fatal, Resend, Wait, classify, fatal
from gateway.telegram.client import BotApi, BotApiError

log = logging.getLogger(__name__)


HOLD_BACKOFF_CAP = 1.0
"""Longest wait between two tries of a batch nothing could take (offset held)."""
MOVE_BACKOFF_CAP = 0.5
"""Longest wait between two tries to move a partition's parked updates: they reach their
stream within about this long of its node answering again."""
PARK_TRIES = 3
"""Parking streams (on distinct nodes) tried before a partition's updates are held."""
SCAN = 200
"""Entries read from a parking stream at a time."""


@dataclass(eq=False)
class _Parked:
    """Where one partition's parked updates are. New ones go to ``streams[-1]``; earlier
    streams (only when a start found the partition in several) are moved first.
    ``start`` is each stream's XRANGE bound before which nothing of the partition is left."""

    streams: list[str]
    start: dict[str, str]
    mover: asyncio.Task[None] | None = None
    moved: int = 0
    refused: bool = False  # the partition refused the mover's last try


class Poller:
    """One getUpdates loop per bot (Telegram allows one poller at a time)."""

    def __init__(
        self,
        api: BotApi,
        publisher: UpdatePublisher,
        *,
        bot_id: int,
        allowed_updates: list[str],
        timeout: int,
        limit: int = 100,
        observe: IngressMetrics | None = None,
    ) -> None:
        self._api = api
        self._publisher = publisher
        self._bot_id = bot_id
        self._allowed = allowed_updates
        self._timeout = timeout
        self._limit = limit
        self.offset: int | None = None
        self.stored = 0  # updates of fetched batches now in Redis (stored or parked)
        self.parked = 0  # of those, parked
        self._parking: dict[int, _Parked] = {}
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._found_parked = False  # looked for what an earlier poller left parked
        self._finding = asyncio.Lock()
        self._chores: set[asyncio.Task[None]] = set()
        self._observe = observe or IngressMetrics.off()

    # This bot's counters, looked up per use: its `bot` label follows the bot table.
    @property
    def _accepted(self) -> Any:
        return self._observe.for_bot(self._bot_id).updates["polling", "accepted"]

    @property
    def _duplicate(self) -> Any:
        return self._observe.for_bot(self._bot_id).updates["polling", "duplicate"]

    @property
    def _rejected(self) -> Any:
        return self._observe.for_bot(self._bot_id).updates["polling", "rejected"]

    def parking(self) -> dict[int, str]:
        """Partitions with parked updates, and the parking stream that takes new ones."""
        return {p: st.streams[-1] for p, st in self._parking.items()}

    async def run(self) -> None:
        """Poll until cancelled; ``TelegramFatal`` on 401, 409 and any other permanent error
        (``gateway.telegram.answers``: getUpdates has nothing to dead-letter)."""
        self._chore(self._find_parked_soon())
        try:
            await self._poll()
        finally:
            tasks = [st.mover for st in self._parking.values() if st.mover] + list(self._chores)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self) -> None:
        failures = 0
        while True:
            try:
                batch = await self._api.get_updates_raw(
                    self.offset, self._limit, self._timeout, self._allowed
                )
            except BotApiError as exc:
                decision = classify(exc)
                if isinstance(decision, Fatal | Dead | Resend):  # nothing to dead-letter
                    raise fatal(decision, exc) from None
                if isinstance(decision, Wait):
                    log.warning("getUpdates flood wait: %ss", decision.seconds)
                    await asyncio.sleep(decision.seconds)
                    continue
                delay = backoff(failures)
                failures += 1
                log.warning("getUpdates failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            if batch:
                await self._store(batch)
                self.offset = max(int(u["update_id"]) for u in batch) + 1

    # --- storing a batch ----------------------------------------------------------------

    async def _store(self, batch: list[dict[str, object]]) -> None:
        """Store or park every update of a batch; retry what nothing took (the offset is
        held meanwhile, with a backoff of at most ``HOLD_BACKOFF_CAP``)."""
        pending: dict[int, list[Fields]] = {}
        for update in batch:
            fields = self._entry(update)
            if fields is not None:
                pending.setdefault(self._publisher.partition(fields), []).append(fields)
        count = sum(len(entries) for entries in pending.values())
        attempt = 0
        while True:
            try:
                if not self._found_parked:
                    await self._find_parked()
                ps = list(pending)
                outcomes = await asyncio.gather(*(self._store_partition(p, pending[p]) for p in ps))
                pending = {p: rest for p, (rest, _) in zip(ps, outcomes, strict=True) if rest}
                if not pending:
                    self.stored += count
                    return
                reason = next(why for rest, why in outcomes if rest)
            except RedisUnavailable as exc:
                reason = str(exc)
            delay = backoff(attempt, base=0.1, cap=HOLD_BACKOFF_CAP)
            attempt += 1
            log.warning("redis unavailable, holding offset %s: %s", self.offset, reason)
            await asyncio.sleep(delay)

    def _entry(self, update: dict[str, object]) -> Fields | None:
        update_id = update.get("update_id")
        if not isinstance(update_id, int):
            log.error("skipping update without an integer update_id")
            self._rejected.inc()
            return None
        chat_id, _ = extract_update_ids(update)
        return update_fields(
            bot_id=self._bot_id,
            update_id=update_id,
            chat_id=chat_id,
            source="polling",
            raw_update=orjson.dumps(update),
        )

    async def _store_partition(self, p: int, entries: list[Fields]) -> tuple[list[Fields], str]:
        """Publish (or park) one partition's updates of a batch, in order. Returns the
        ones neither its stream nor a parking stream took, and why."""
        async with self._locks[p]:
            st = self._parking.get(p)
            if st is not None:  # behind the ones already parked, never ahead of them
                why = await self._publisher.park(st.streams[-1], entries)
                if why is not None:
                    return entries, why
                self._parked_some(len(entries))
                return [], ""
            # One atomic call: all of them are stored, or none.
            replies = await self._publisher.publish_entries(entries)
            reply = replies[0]
            if not isinstance(reply, Exception):
                new = sum(r is True for r in replies)
                self._accepted.inc(new)
                self._duplicate.inc(len(replies) - new)
                return [], ""
            return await self._start_parking(p, entries, str(reply))

    async def _start_parking(
        self, p: int, entries: list[Fields], cause: str
    ) -> tuple[list[Fields], str]:
        why = cause
        for stream in self._publisher.parking_places(p)[:PARK_TRIES]:
            refused = await self._publisher.park(stream, entries)
            if refused is not None:
                why = f"{cause}; parking in {stream}: {refused}"
                continue
            log.warning(
                "partition %d cannot take its updates (%s): parking them in %s until it can",
                p,
                cause,
                stream,
            )
            st = self._parking[p] = _Parked([stream], {stream: "-"})
            st.mover = asyncio.create_task(self._move(p, st))
            self._parked_some(len(entries))
            return [], ""
        return entries, why

    def _parked_some(self, n: int) -> None:
        if n:
            self._accepted.inc(n)  # stored, parked: the mover dedupes them
            self.parked += n
            self._chore(self._publisher.count_parked(n))

    def _chore(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # --- moving parked updates to their partition ----------------------------------------

    async def _move(self, p: int, st: _Parked) -> None:
        """Move partition ``p``'s parked updates to its stream, in order, until none is
        left; then its new updates go direct again."""
        attempt = 0
        while True:
            try:
                if await self._move_some(p, st):
                    async with self._locks[p]:  # no update of p is being parked meanwhile
                        if not await self._left(p, st):
                            del self._parking[p]
                            log.info(
                                "partition %d: its %d parked update(s) are in its stream; "
                                "publishing directly again",
                                p,
                                st.moved,
                            )
                            return
                attempt = 0
                continue
            except RedisUnavailable as exc:
                if attempt == 0:
                    log.info("partition %d: cannot move parked updates yet (%s)", p, exc)
            except Exception:  # a bug must not leave the partition parked for good
                reraise_cancel()  # a cancel that code under it turned into an error
                if attempt == 0:
                    log.exception("partition %d: moving parked updates failed", p)
            delay = backoff(attempt, base=0.05, cap=MOVE_BACKOFF_CAP)
            attempt += 1
            await asyncio.sleep(delay)

    async def _move_some(self, p: int, st: _Parked) -> bool:
        """Move what a read of the first of ``st.streams`` holds of ``p``; True when the
        last stream is moved to its end (for now)."""
        stream = st.streams[0]
        # While the partition refuses, one entry tells whether it answers again.
        count = 1 if st.refused else SCAN
        rows = await self._publisher.read_parked(stream, st.start[stream], count)
        mine = [(entry_id, f) for entry_id, f in rows if self._partition_of(f) == p]
        st.refused = False
        if mine:  # one atomic call: all of them or none
            [reply, *_] = await self._publisher.publish_entries([f for _, f in mine])
            if isinstance(reply, Exception):
                st.refused = True
                st.start[stream] = mine[0][0]
                raise reply
            await self._publisher.unpark(stream, [entry_id for entry_id, _ in mine])
            st.moved += len(mine)
        if rows:
            st.start[stream] = f"({rows[-1][0]}"
        if len(rows) == count:
            return False
        if len(st.streams) > 1:  # an earlier stream, moved: nothing new goes there
            st.streams.pop(0)
            return False
        return True

    async def _left(self, p: int, st: _Parked) -> bool:
        """Is any update of ``p`` parked past where the mover got to?"""
        stream = st.streams[-1]
        start = st.start[stream]
        while True:
            rows = await self._publisher.read_parked(stream, start, SCAN)
            if any(self._partition_of(f) == p for _, f in rows):
                return True
            if len(rows) < SCAN:
                return False
            start = f"({rows[-1][0]}"

    def _partition_of(self, fields: Fields) -> int | None:
        try:
            return self._publisher.partition(fields)
        except (KeyError, ValueError):
            return None  # not an entry the poller wrote: left where it is

    async def _find_parked_soon(self) -> None:
        """``_find_parked`` at start, without waiting for a first update to store."""
        attempt = 0
        while not self._found_parked:
            try:
                await self._find_parked()
            except RedisUnavailable as exc:
                if attempt == 0:
                    log.info("cannot look for parked updates yet (%s)", exc)
                await asyncio.sleep(backoff(attempt, base=0.1, cap=HOLD_BACKOFF_CAP))
                attempt += 1

    async def _find_parked(self) -> None:
        """Before the first store: which partitions an earlier poller left updates parked
        for, and where; their movers start, and their new updates are parked behind."""
        async with self._finding:
            if not self._found_parked:
                await self._find_parked_now()

    async def _find_parked_now(self) -> None:
        found: dict[int, dict[str, str]] = {}  # partition -> stream -> first entry id
        odd = 0
        for stream in self._publisher.keys.all_parked():
            start = "-"
            while True:
                rows = await self._publisher.read_parked(stream, start, 1000)
                for entry_id, f in rows:
                    p = self._partition_of(f)
                    if p is None:
                        odd += 1
                    else:
                        found.setdefault(p, {}).setdefault(stream, entry_id)
                if len(rows) < 1000:
                    break
                start = f"({rows[-1][0]}"
        if odd:
            log.error("%d parked entries without a chat partition left in place", odd)
        for p, firsts in sorted(found.items()):
            streams = sorted(firsts, key=lambda s: _id_order(firsts[s]))
            st = self._parking[p] = _Parked(streams, dict(firsts))
            st.mover = asyncio.create_task(self._move(p, st))
            log.warning(
                "partition %d has updates parked by an earlier poller in %s: moving them first",
                p,
                ", ".join(streams),
            )
        self._found_parked = True


def _id_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
