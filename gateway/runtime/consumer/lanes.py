"""Per-chat lanes: dispatch, running a lane's entries in order through the handler,
capacity, take-over of a gained partition and hand-back of unstarted entries."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict, deque
from typing import Any

from redis.exceptions import RedisError

from gateway.core.backoff import backoff
from gateway.core.contracts import Reason, Stage
from gateway.core.errors import TelegramFatal as GatewayFatal
from gateway.runtime.consumer.base import LAPSE_POLL, is_nogroup
from gateway.runtime.consumer.finish import Finishing
from gateway.runtime.consumer.outcome import (
    Dead,
    Item,
    LeaseLost,
    Retry,
    Status,
)
from gateway.runtime.redis_errors import is_transient

log = logging.getLogger(__name__)


class Lanes(Finishing):
    """One lane per (stream, chat): in order within a chat, concurrent across chats."""

    async def drain(self) -> None:
        """Wait until every lane finished what it holds."""
        while self._lane_tasks:
            await asyncio.gather(*list(self._lane_tasks), return_exceptions=True)

    async def _cancel_lanes(self) -> None:
        tasks = list(self._lane_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait_capacity(self) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        cap = asyncio.ensure_future(self._capacity.wait())
        await asyncio.wait(
            [stop, cap], timeout=self.config.claim_every, return_when=asyncio.FIRST_COMPLETED
        )
        stop.cancel()
        cap.cancel()

    def _dispatch(self, item: Item) -> None:
        stream, entry_id = item.stream, item.entry_id
        if entry_id in self._held[stream]:
            return  # our own entry, claimed back while it waits in a lane
        self._unfinished[stream].pop(entry_id, None)
        self._held[stream].add(entry_id)
        self._in_flight += 1
        key = (stream, self.order_key(item.fields))
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(item)
            if key in self._waiting_lanes:
                self._waiting += 1  # it waits behind the lane's head
            return
        self._lanes[key] = deque([item])
        task = asyncio.create_task(self._run_lane(key))
        self._lane_tasks.add(task)
        task.add_done_callback(self._lane_tasks.discard)

    async def _run_lane(self, key: tuple[str, bytes]) -> None:
        lane = self._lanes[key]
        attempts = 0  # of the entry at the head of the lane
        try:
            while lane:
                if self.stopping:
                    break  # finish only what a lane had started; hand back the rest
                item = lane[0]
                stream = item.stream
                if not self._may_start(stream):
                    if self._holds(stream):
                        # Still ours, trust lapsed (Redis away, a late renewal): wait for
                        # the renewal or the loss. Leaving would strand these entries
                        # while the chat's next ones are read and overtake them.
                        await self._sleep(LAPSE_POLL)
                        continue
                    break  # lost or being released: the next owner takes the rest
                if not item.since:
                    item = lane[0] = dataclasses.replace(item, since=time.monotonic())
                try:
                    status = await self._handle_one(item)
                except GatewayFatal as exc:
                    self._fatal = exc
                    self.stop()
                    return
                if isinstance(status, Retry):  # the handler's own delay, not a failure
                    lane[0] = dataclasses.replace(item, retries=item.retries + 1, memo=status.memo)
                    await self._wait_retry(key, lane, status)
                    continue
                if status is Status.LOST and not self._holds(stream):
                    break  # leave this and the rest pending for the partition's new owner
                if status is not Status.DONE:
                    # Keep the chat's order: retry this entry in place after a backoff
                    # (other chats go on); only handler failures count as deliveries.
                    counted = item.deliveries + (status is Status.FAILED)
                    lane[0] = dataclasses.replace(item, deliveries=counted)
                    attempts += 1
                    await self._sleep(backoff(attempts, base=0.1, cap=5.0))
                    continue
                attempts = 0
                lane.popleft()
                self._held[stream].discard(item.entry_id)
                self._in_flight -= 1
                self._capacity.set()
        finally:
            # On cancel (grace over) or a fatal error the rest stays pending: claimed later.
            for item in lane:
                self._held[item.stream].discard(item.entry_id)
                self._unfinished[item.stream][item.entry_id] = item.deliveries
                self._in_flight -= 1
            del self._lanes[key]
            self._capacity.set()

    async def _wait_retry(self, key: tuple[str, bytes], lane: deque[Item], retry: Retry) -> None:
        """Sleep a ``Retry``'s delay. A releasing one (``Retry.release``: its bot's pipeline
        is down) takes the lane out of the read capacity meanwhile: every entry it holds
        counts as waiting (``_waiting``; entries that join it too, in ``_dispatch``), so
        reads go on for the other chats. Only this lane's task changes the lane's length
        by popping, and it is here: the same ``len(lane)`` is added and taken back."""
        if not retry.release or self.config.max_waiting <= 0:
            await self._sleep(retry.delay)
            return
        self._waiting_lanes.add(key)
        self._waiting += len(lane)
        self._capacity.set()
        try:
            await self._sleep(retry.delay)
        finally:
            self._waiting_lanes.discard(key)
            self._waiting -= len(lane)

    def _free(self) -> int:
        """How many more entries may be fetched now: ``max_in_flight`` minus the entries
        held that are not waiting in a releasing ``Retry``, and minus the waiting ones
        past ``max_waiting`` (memory holds ``max_in_flight + max_waiting`` at most)."""
        cfg = self.config
        active = self._in_flight - self._waiting
        return cfg.max_in_flight - active - max(0, self._waiting - cfg.max_waiting)

    async def _handle_one(self, item: Item) -> Status | Retry:
        entry_id = item.entry_id
        try:
            return await self._handle(item)
        except Exception as exc:
            if is_transient(exc) or is_nogroup(exc):  # Redis away: not the entry's fault
                log.warning(
                    "%s: redis error on %s (%s: %s); retrying",
                    self.config.role,
                    entry_id,
                    type(exc).__name__,
                    exc,
                )
                return Status.RETRY
            if not isinstance(exc, RedisError):
                raise
            # Refused for good (a script or argument error): retrying in place would hold
            # the chat forever; as a failed delivery it is dead-lettered in the end.
            log.exception("%s: redis refused %s; counted as a failure", self.config.role, entry_id)
            return Status.FAILED

    async def _handle(self, item: Item) -> Status | Retry:
        stream, entry_id, fields, deliveries = (
            item.stream,
            item.entry_id,
            item.fields,
            item.deliveries,
        )
        cfg = self.config
        if deliveries > cfg.max_deliveries:
            return await self._dead(
                stream,
                entry_id,
                fields,
                deliveries,
                Dead(
                    Reason.RETRIES_EXHAUSTED if cfg.stage is Stage.SENDER else Reason.HANDLER_ERROR,
                    f"delivered {deliveries} times without success",
                ),
            )
        if deliveries > 1:
            self._redelivered.inc()
        try:
            outcome = await self.handler(item, self._fence(stream))
        except LeaseLost:
            log.warning(
                "%s: partition of %s moved mid-entry; left to its owner", cfg.role, entry_id
            )
            return Status.LOST
        except (asyncio.CancelledError, GatewayFatal, RedisError):
            raise
        except Exception as exc:
            if is_transient(exc):
                raise  # Redis away (or a connection closed under the handler): retried
            log.exception(
                "%s: handling %s failed (delivery %d); retrying in order",
                cfg.role,
                entry_id,
                deliveries,
            )
            return Status.FAILED
        if isinstance(outcome, Retry):
            log.info("%s: %s retried in %.1fs: %s", cfg.role, entry_id, outcome.delay, outcome.why)
            return outcome
        if isinstance(outcome, Dead):
            return await self._dead(stream, entry_id, fields, deliveries, outcome)
        return await self._finish(stream, entry_id, outcome)

    async def _take_over(self, p: int) -> None:
        """A partition just became ours: finish its pending entries first, in order."""
        stream = self.config.streams[p]
        if self.relay is not None:
            self.relay.dirty.add(p)  # the previous owner may have left relay entries
        start = "-"
        while True:
            rows: Any = await self.redis.xpending_range(
                stream, self.config.group, min=start, max="+", count=200
            )
            if not rows:
                return
            ids = [r["message_id"] for r in rows]
            counts = {
                (
                    r["message_id"].decode()
                    if isinstance(r["message_id"], bytes)
                    else r["message_id"]
                ): int(r["times_delivered"]) + 1
                for r in rows
            }
            claimed: Any = await self.redis.xclaim(stream, self.config.group, self.name, 0, ids)
            for entry_id, fields in claimed:
                if fields is None:
                    continue  # trimmed meanwhile
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                self._dispatch(Item(stream, eid, fields, counts.get(eid, 2)))
            if len(rows) < 200:
                return
            last = ids[-1].decode() if isinstance(ids[-1], bytes) else ids[-1]
            start = f"({last}"

    def _drained(self, p: int) -> bool:
        """May partition ``p`` be released: nothing of it in a lane, and no read naming it
        in flight (a blocked XREADGROUP could still hand us its next entry after the
        release, and the next owner would read the ones after it first)."""
        stream = self.config.streams[p]
        return not self._held.get(stream) and stream not in self._reading

    async def _hand_back_partition(self, p: int) -> None:
        """Before releasing ``p``: its entries we never started go back with their count."""
        await self._hand_back([self.config.streams[p]])

    async def _hand_back(self, streams: list[str] | None = None) -> None:
        """Make entries we fetched but did not finish claimable at once by other consumers.

        The next claim counts one more delivery, so each entry's counter is set back to
        the deliveries it really had (RETRYCOUNT): a rolling restart is not an attempt.
        Entries of partitions no longer ours are left alone: their new owner has them."""
        for stream, entries in list(self._unfinished.items()):
            if streams is not None and stream not in streams:
                continue
            if not entries or not self._lease_valid(stream):
                continue
            by_count: dict[int, list[str]] = defaultdict(list)
            for entry_id, deliveries in entries.items():
                by_count[max(0, deliveries - 1)].append(entry_id)
            try:
                for retrycount, ids in sorted(by_count.items()):
                    await self.redis.xclaim(
                        stream,
                        self.config.group,
                        self.name,
                        0,
                        list[Any](ids),
                        idle=self.config.claim_idle_ms,
                        retrycount=retrycount,
                        justid=True,
                    )
                log.info("%s: handed back %d unstarted entries", self.config.role, len(entries))
            except Exception as exc:  # they stay pending and are claimed later
                if not is_transient(exc):
                    raise
                log.warning("%s: hand-back failed (%s)", self.config.role, exc)
            self._unfinished.pop(stream, None)
