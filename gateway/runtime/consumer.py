"""A consumer-group loop shared by the worker and the sender (redis-py directly).

- reads every partition of a role with bounded XREADGROUPs and keeps at most
  ``max_in_flight`` entries fetched but unfinished, so a stop leaves little in flight;
- gives every chat a *lane*: one chat's entries run strictly in order, different chats
  run concurrently, and a slow chat (a slow pipeline call, a rate-limit wait) holds only
  its own lane while reads continue for the others;
- keeps its fetched entries from looking idle (XCLAIM ... JUSTID to itself) so no other
  consumer claims an entry that is only waiting in a lane;
- XACKs only after the handler finished (or dead-letters with a reason, then acks); the
  handler's effects (entries to publish, a marker key) are written by the same Lua script
  that acks, fenced by the partition's lease: all of them or none. Finishes of many lanes
  share one round trip (``gateway.runtime.batching``);
- an entry whose handler raised is retried in place (its chat waits), and entries of a
  dead consumer are re-claimed (XAUTOCLAIM) after ``claim_idle_ms``; the delivery count
  travels with the entry and past ``max_deliveries`` it is dead-lettered. Entries handed
  back unstarted keep their count (XCLAIM RETRYCOUNT), so restarts do not use it up;
- survives Redis outages (backoff, reconnect) and recreates a missing group (NOGROUP):
  every retry loop asks ``gateway.runtime.redis_errors.is_transient`` what Redis will get over
  (a lost connection, CLUSTERDOWN, LOADING, a failover...) and lets the rest surface; on a
  cluster a failure reloads the slot map, so the next try goes to the slot's new node;
  a read or claim whose reply is lost has still handed its entries over, so those calls
  are never re-sent by the client, and after a failed one the consumer fetches its own
  pending entries (XREADGROUP ID 0) before reading new ones: no chat is reordered;
- ``stop()`` stops reading, lets in-flight work finish within ``grace`` seconds, and leaves
  the rest pending for a claim — never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from gateway.core.backoff import backoff
from gateway.core.contracts import Keys, Reason, Stage, dead_fields, decode_fields
from gateway.core.errors import GatewayError
from gateway.core.errors import TelegramFatal as GatewayFatal
from gateway.runtime.batching import Coalescer, pooled_connection
from gateway.runtime.leases import LeaseManager
from gateway.runtime.redis_errors import is_transient, refresh_slots
from gateway.runtime.relay import RELAY_CAP, Relay, relay_fields
from gateway.runtime.streams import ensure_groups, is_cluster, trim_stream

log = logging.getLogger(__name__)

FINISH_LUA = """
-- KEYS[1] the entry's stream, KEYS[2] its partition's lease, KEYS[3] a marker key,
-- KEYS[4] the partition's relay, KEYS[5..] one stream per entry to publish. ARGV[1] group,
-- ARGV[2] lease owner ('' when not fenced), ARGV[3] entry id, ARGV[4] marker ttl ('0': no
-- marker), ARGV[5] how many of the entries go to the relay, ARGV[6] the relay's cap,
-- ARGV[7..] for each entry to publish: its field count, then its fields and values.
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1) == 0 then
  return 0
end
local relayed = tonumber(ARGV[5])
if relayed > 0 and redis.call('XLEN', KEYS[4]) + relayed > tonumber(ARGV[6]) then
  return -2
end
local at = 7
for k = 5, #KEYS do
  local n = tonumber(ARGV[at])
  redis.call('XADD', KEYS[k], '*', unpack(ARGV, at + 1, at + n))
  at = at + n + 1
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[4])
end
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
"""
"""Finish an entry: its effects and its XACK, or (lease lost: -1; relay full: -2) nothing at
all. An entry no longer pending (a retry whose earlier try ran but lost its reply) is 0
and writes nothing again: a finish's effects in its partition's slot land once. All keys
share the partition's hash tag; on a cluster, effects elsewhere are written first, or put
in the partition's relay when their node does not answer (``gateway/runtime/relay.py``)."""

LEASE_LOST = -1
RELAY_FULL = -2

RECOVER_PAGE = 500  # own pending entries fetched per call after a lost read

TRIM_TIMEOUT = 10.0  # seconds one stream's trim may take before it is skipped this round

LAPSE_POLL = 0.1  # seconds between checks while a held partition's lease is not trusted

REDIS_RETRY_CAP = 1.0
"""Longest wait (seconds, full jitter below it) between tries while Redis is away: once
the cluster is ok again, reads resume within about this long."""

CLUSTER_BLOCK_MS = 100
"""On a Redis Cluster one XREADGROUP cannot name streams of several slots, so every
partition gets its own read and they run together; the batch is ready when the last
returns, so each blocks only this long (an idle process: partitions x 10 reads/s)."""


def consumer_name(role: str) -> str:
    """Unique per process: ``faststream run --workers`` style forks must not share one."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Ack:
    """The handler finished: acknowledge, and in the same atomic step publish ``publish``
    (stream, fields) entries and set ``marker`` (key, ttl seconds) if given."""

    publish: tuple[tuple[str, Mapping[str, str | bytes]], ...] = ()
    marker: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Dead:
    """Permanent failure: dead-letter with a reason code, then acknowledge; ``publish``
    (stream, fields) entries go with the dead letter (the sender's failed result)."""

    reason: Reason
    error: str
    publish: tuple[tuple[str, Mapping[str, str | bytes]], ...] = ()


Outcome = Ack | Dead

lease_valid: contextvars.ContextVar[Callable[[], bool]] = contextvars.ContextVar(
    "lease_valid", default=lambda: True
)
"""Set for each handler call: may it still act on its partition? Handlers check it right
before an unfenced side effect (a pipeline POST) and raise ``LeaseLost`` if not."""


class LeaseLost(GatewayError):
    """The partition moved while its entry was being handled: stop, do not acknowledge."""


class RelayFullError(GatewayError):
    """The partition's relay holds ``relay_cap`` entries: the finish waits (retried)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """What a handler needs to fence an effect that no finish script can cover (the
    sender's Bot API call): the partition's lease key and owner, checked in Redis right
    before the effect, and this process's local trust in that lease."""

    lease_key: str
    owner: str  # '' when the role runs without partition leases: nothing to check
    trust_left: Callable[[], float]
    """Seconds this process still trusts its lease (monotonic; ``inf`` without leases)."""
    startable: Callable[[], bool]
    """May new work of the partition start (trusted and not being released)?"""


fence: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("fence", default=None)
"""Set for each handler call, beside ``lease_valid``."""


class _Status(Enum):
    DONE = "done"  # acknowledged or dead-lettered (or the ack was fenced off)
    FAILED = "failed"  # the handler raised: counts as a delivery
    RETRY = "retry"  # Redis was away: try again, not the entry's fault
    LOST = "lost"  # the partition moved: the next owner handles it


Item = tuple[str, str, dict[bytes, bytes], int]
"""(stream, entry id, fields, delivery count)"""
Handler = Callable[[str, str, dict[bytes, bytes], int], Awaitable[Outcome]]
"""(stream, entry id, fields, delivery count) → outcome; raising leaves the entry pending."""


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    role: str
    group: str
    stage: Stage
    streams: list[str]
    count: int = 16
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    claim_every: float = 5.0
    max_deliveries: int = 5
    grace: float = 10.0
    max_in_flight: int = 256
    # (stream, retention seconds, respect consumer groups) trimmed every ``trim_every``
    trim: tuple[tuple[str, float, bool], ...] = ()
    trim_every: float = 60.0
    # Partition leases: one live process per partition (streams[p] is partition p).
    leases: bool = False
    lease_ttl_ms: int = 5000
    # On a Redis Cluster: entries per partition kept for a stream whose node is away.
    relay_cap: int = RELAY_CAP


class StreamConsumer:
    """Runs ``handler`` over the role's streams until ``stop()``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        config: ConsumerConfig,
        handler: Handler,
        order_key: Callable[[dict[bytes, bytes]], bytes] = lambda f: f.get(b"chat_id", b""),
        name: str | None = None,
        calls: Coalescer | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.handler = handler
        self.order_key = order_key
        self.name = name or consumer_name(config.role)
        self.handled = 0
        self.dead = 0
        self._stopping = asyncio.Event()
        self._last_claim = 0.0
        self._last_trim = 0.0
        self._trim_task: asyncio.Task[None] | None = None
        self._lanes: dict[tuple[str, bytes], deque[Item]] = {}
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._held: dict[str, set[str]] = defaultdict(set)  # stream -> fetched, unfinished ids
        self._in_flight = 0
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._fatal: BaseException | None = None
        self._partition_of = {stream: p for p, stream in enumerate(config.streams)}
        self._cluster = is_cluster(redis)
        self._calls = calls or Coalescer(redis)  # shared with the handler: fewer pipelines
        self._finish_sha = self._calls.script(FINISH_LUA)
        self._leases_stop = asyncio.Event()
        self._relay_stop = asyncio.Event()
        self.leases: LeaseManager | None = None
        if config.leases:
            self.leases = LeaseManager(
                redis,
                members_key=keys.members(config.role),
                lease_key=lambda p: keys.lease(config.role, p),
                name=self.name,
                partitions=len(config.streams),
                ttl_ms=config.lease_ttl_ms,
                on_gain=self._take_over,
                on_release=self._hand_back_partition,
                drained=self._drained,
                # A read the previous owner had blocked on this partition has returned
                # (its entries are pending, so _take_over queues them) before we read.
                # (On a cluster reads block CLUSTER_BLOCK_MS: a shorter wait, a faster resume.)
                settle=(CLUSTER_BLOCK_MS if self._cluster else config.block_ms) / 1000 + 0.5,
                calls=self._calls,
            )
        # stream -> {entry id: delivery count}: fetched, not finished, to hand back on stop
        self._unfinished: dict[str, dict[str, int]] = defaultdict(dict)
        self._reading: frozenset[str] = frozenset()  # streams of the XREADGROUP in flight
        # Streams whose last read failed: it may have delivered entries we never saw.
        self._lost: set[str] = set()
        # On a cluster, streams whose node failed: (failures in a row, next try at). The
        # other partitions' reads and claims go on meanwhile (one node, not the gateway).
        self._down: dict[str, tuple[int, float]] = {}
        # On a cluster: effects for another node's stream that does not answer wait in
        # the partition's relay, moved by the partition's owner (this process).
        self.relay: Relay | None = None
        if self._cluster:
            self.relay = Relay(
                redis,
                role=config.role,
                key=lambda p: keys.relay(config.role, p),
                partitions=len(config.streams),
                movable=lambda p: self._lease_valid(config.streams[p]),
                cap=config.relay_cap,
            )

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def active_streams(self) -> list[str]:
        """Streams this process may read now: all, or those of its valid leases."""
        if self.leases is None:
            return self.config.streams
        return [self.config.streams[p] for p in self.leases.reading()]

    def _may_start(self, stream: str) -> bool:
        """May a lane start this stream's next entry? Not once its partition is being
        released: the entry in progress finishes, the rest goes to the next owner at once
        (a sender behind a saturated rate limit would otherwise hold it for minutes)."""
        return self.leases is None or self.leases.startable(self._partition_of[stream])

    def _holds(self, stream: str) -> bool:
        """Is the partition still this process's (owned or being taken), trusted or not?"""
        return self.leases is not None and self.leases.holds(self._partition_of[stream])

    def _lease_valid(self, stream: str) -> bool:
        """Is this process still the partition's trusted owner (fencing)?"""
        return self.leases is None or self.leases.valid(self._partition_of[stream])

    def _fence(self, stream: str) -> Fence:
        if self.leases is None:
            return Fence(stream, "", lambda: float("inf"), lambda: True)
        p, leases = self._partition_of[stream], self.leases
        return Fence(
            self.keys.lease(self.config.role, p),
            self.name,
            lambda: leases.trust_left(p),
            lambda: leases.startable(p),
        )

    def _drained(self, p: int) -> bool:
        """May partition ``p`` be released: nothing of it in a lane, and no read naming it
        in flight (a blocked XREADGROUP could still hand us its next entry after the
        release, and the next owner would read the ones after it first)."""
        stream = self.config.streams[p]
        return not self._held.get(stream) and stream not in self._reading

    async def run(self) -> None:
        """Consume until stopped, then let the lanes finish. Redis errors are retried."""
        await self._bootstrap()
        lease_task = None
        if self.leases is not None:
            lease_task = asyncio.create_task(self.leases.run(self._leases_stop))
        relay_task = None
        if self.relay is not None:
            relay_task = asyncio.create_task(self.relay.run(self._relay_stop))
        try:
            await self._consume()
        finally:
            # Lanes still running (cancelled at the end of the grace period, or a crash)
            # stop before the leases go: nobody acts on a partition after releasing it.
            await self._cancel_lanes()
            if relay_task is not None:  # what it has not moved, the next owner moves
                # The event as well as the cancel: on Python 3.11 a cancel that meets an
                # expiring asyncio.timeout inside a move comes out as TimeoutError, which
                # the relay's loop takes for a Redis failure; the event still ends it.
                self._relay_stop.set()
                relay_task.cancel()
                await asyncio.gather(relay_task, return_exceptions=True)
            if self._trim_task is not None:
                self._trim_task.cancel()
                await asyncio.gather(self._trim_task, return_exceptions=True)
            if lease_task is not None:
                self._leases_stop.set()
                lease_task.cancel()  # a tick stuck on Redis must not hold the shutdown
                await asyncio.gather(lease_task, return_exceptions=True)
                await self.leases.release_all()  # type: ignore[union-attr]

    async def _consume(self) -> None:
        failures = 0
        while not self.stopping:
            if self._fatal is not None:
                raise self._fatal
            try:
                self._maintain()
                await self._keep_held_fresh()
                free = self.config.max_in_flight - self._in_flight
                if free <= 0:
                    self._capacity.clear()
                    await self._wait_capacity()
                    continue
                batch = await self._claim_due(free)
                if not batch:
                    batch = await self._read(min(free, self.config.count))
                failures = 0
            except Exception as exc:
                if _is_nogroup(exc):
                    log.warning("%s: consumer group missing, recreating", self.config.role)
                    await self._bootstrap()
                    continue
                if not is_transient(exc):
                    raise
                delay = backoff(failures, base=0.1, cap=REDIS_RETRY_CAP)
                failures += 1
                log.warning(
                    "%s: redis error (%s: %s); retrying in %.1fs",
                    self.config.role,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await refresh_slots(self.redis)
                await self._sleep(delay)
                continue
            for item in batch:
                self._dispatch(item)
        await self.drain()
        await self._hand_back()
        if self._fatal is not None:
            raise self._fatal

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
        stream, entry_id, fields, _ = item
        if entry_id in self._held[stream]:
            return  # our own entry, claimed back while it waits in a lane
        self._unfinished[stream].pop(entry_id, None)
        self._held[stream].add(entry_id)
        self._in_flight += 1
        key = (stream, self.order_key(fields))
        lane = self._lanes.get(key)
        if lane is not None:
            lane.append(item)
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
                stream, entry_id, fields, deliveries = lane[0]
                if not self._may_start(stream):
                    if self._holds(stream):
                        # Still ours, trust lapsed (Redis away, a late renewal): wait for
                        # the renewal or the loss. Leaving would strand these entries
                        # while the chat's next ones are read and overtake them.
                        await self._sleep(LAPSE_POLL)
                        continue
                    break  # lost or being released: the next owner takes the rest
                try:
                    status = await self._handle_one(stream, entry_id, fields, deliveries)
                except GatewayFatal as exc:
                    self._fatal = exc
                    self.stop()
                    return
                if status is _Status.LOST and not self._holds(stream):
                    break  # leave this and the rest pending for the partition's new owner
                if status is not _Status.DONE:
                    # Keep the chat's order: retry this entry in place after a backoff
                    # (other chats go on); only handler failures count as deliveries.
                    counted = deliveries + (status is _Status.FAILED)
                    lane[0] = (stream, entry_id, fields, counted)
                    attempts += 1
                    await self._sleep(backoff(attempts, base=0.1, cap=5.0))
                    continue
                attempts = 0
                lane.popleft()
                self._held[stream].discard(entry_id)
                self._in_flight -= 1
                self._capacity.set()
        finally:
            # On cancel (grace over) or a fatal error the rest stays pending: claimed later.
            for stream, entry_id, _, deliveries in lane:
                self._held[stream].discard(entry_id)
                self._unfinished[stream][entry_id] = deliveries
                self._in_flight -= 1
            del self._lanes[key]
            self._capacity.set()

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
                self._dispatch((stream, eid, fields, counts.get(eid, 2)))
            if len(rows) < 200:
                return
            last = ids[-1].decode() if isinstance(ids[-1], bytes) else ids[-1]
            start = f"({last}"

    def _maintain(self) -> None:
        """Retention: trim acknowledged entries past their age (never unread or pending),
        in the background, each stream on its own: a node that is away (the results
        stream's, a partition's) delays no read and no other stream's trim."""
        loop = asyncio.get_running_loop()
        if not self.config.trim or loop.time() - self._last_trim < self.config.trim_every:
            return
        self._last_trim = loop.time()
        if self._trim_task is None or self._trim_task.done():
            self._trim_task = asyncio.create_task(self._trim_all())

    async def _trim_all(self) -> None:
        outcomes = await asyncio.gather(
            *(
                self._trim(stream, retention, groups)
                for stream, retention, groups in self.config.trim
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                self._fatal = outcome  # not Redis being away: a bug, the role stops
                return

    async def _trim(self, stream: str, retention: float, groups: bool) -> None:
        try:
            async with asyncio.timeout(TRIM_TIMEOUT):
                removed = await trim_stream(self.redis, stream, retention, groups=groups)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc) or _is_nogroup(exc)):
                raise
            log.warning("%s: trimming %s skipped (%s)", self.config.role, stream, exc)
            return
        if removed:
            log.info("%s: trimmed %d entries from %s", self.config.role, removed, stream)

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

    async def _keep_held_fresh(self) -> None:
        """Reset the idle time of entries waiting in our lanes, so nobody claims them."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_claim < self.config.claim_every:
            return
        # Snapshots: lanes and take-overs change these sets while XCLAIM is awaited.
        for stream, ids in list(self._held.items()):
            if ids and self._lease_valid(stream) and self._up(stream):
                try:
                    await self.redis.xclaim(
                        stream, self.config.group, self.name, 0, list(ids), justid=True
                    )
                except Exception as exc:
                    if not (self._cluster and is_transient(exc)):
                        raise
                    self._failed(stream, exc)  # the other nodes' streams go on

    def _up(self, stream: str) -> bool:
        """Is ``stream``'s node worth a try now (not in its backoff after a failure)?"""
        down = self._down.get(stream)
        return down is None or asyncio.get_running_loop().time() >= down[1]

    def _failed(self, stream: str, exc: BaseException) -> None:
        """On a cluster: ``stream``'s node failed (transiently); back off on it alone."""
        failures = self._down.get(stream, (0, 0.0))[0]
        delay = backoff(failures, base=0.1, cap=REDIS_RETRY_CAP)
        self._down[stream] = (failures + 1, asyncio.get_running_loop().time() + delay)
        log.warning(
            "%s: redis error on %s (%s: %s); its partition retried in %.1fs",
            self.config.role,
            stream,
            type(exc).__name__,
            exc,
            delay,
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _bootstrap(self) -> None:
        attempt = 0
        while not self.stopping:
            try:
                await ensure_groups(self.redis, self.keys)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff(attempt, base=0.1, cap=REDIS_RETRY_CAP)
                attempt += 1
                log.warning(
                    "%s: cannot create groups (%s); retry in %.1fs", self.config.role, exc, delay
                )
                await self._sleep(delay)

    async def _read(self, count: int) -> list[Item]:
        active = self.active_streams()
        if not active:
            await self._sleep(self.config.block_ms / 1000)
            return []
        if self._cluster:
            return await self._read_cluster(active, count)
        self._reading = frozenset(active)
        try:
            lost = [s for s in active if s in self._lost]
            if lost:
                return await self._recover(lost)
            try:
                reply = await self._xreadgroup(
                    {s: ">" for s in active}, count, self.config.block_ms
                )
            except Exception:  # whatever failed, the read may have delivered entries
                self._lost.update(active)
                raise
        finally:
            self._reading = frozenset()
        return self._items(reply)

    async def _read_cluster(self, active: list[str], count: int) -> list[Item]:
        """One read per partition, all at once (one XREADGROUP cannot span slots). A
        partition whose node fails is retried after its own backoff while the others
        read on; this raises only when every partition tried has failed."""
        tried = [s for s in active if self._up(s)]
        if not tried:  # every node in its backoff: wait for the first one's next try
            loop = asyncio.get_running_loop()
            first = min(self._down[s][1] for s in active)
            await self._sleep(min(max(0.0, first - loop.time()), self.config.block_ms / 1000))
            return []
        self._reading = frozenset(tried)
        try:
            results = await asyncio.gather(
                *(self._read_partition(s, count) for s in tried), return_exceptions=True
            )
        finally:
            self._reading = frozenset()
        out: list[Item] = []
        failed: list[tuple[str, Exception]] = []
        for stream, result in zip(tried, results, strict=True):
            if isinstance(result, Exception):
                self._lost.add(stream)  # it may have delivered entries we never saw
                failed.append((stream, result))
            elif isinstance(result, BaseException):
                raise result
            else:
                self._down.pop(stream, None)
                out += result
        if failed and len(failed) == len(tried):
            raise failed[0][1]  # the whole cluster away: the consumer's own backoff
        for stream, exc in failed:
            if not is_transient(exc):
                raise exc  # NOGROUP too: the consumer recreates the groups
            self._failed(stream, exc)
        if failed:
            await refresh_slots(self.redis)
        return out

    async def _read_partition(self, stream: str, count: int) -> list[Item]:
        """A partition's entries a failed read may have delivered first, else new ones."""
        if stream in self._lost:
            return await self._recover([stream])
        return self._items(await self._xreadgroup({stream: ">"}, count, CLUSTER_BLOCK_MS))

    @staticmethod
    def _items(reply: Any) -> list[Item]:
        out: list[Item] = []
        for stream, entries in reply or []:
            s = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                out.append((s, entry_id.decode(), fields, 1))
        return out

    async def _recover(self, streams: list[str]) -> list[Item]:
        """Entries a failed read may have delivered to us although its reply never came:
        pending under our name, never seen. Our own pending list (XREADGROUP ID 0) is read
        before anything newer, so they go to their lanes ahead of the chat's later entries.
        What the lanes held when the stream's pending list was read is left out: still held,
        or finished (acked) while this ran — handled, and never to be handled again."""
        out: list[Item] = []
        for stream in streams:
            held = set(self._held[stream])  # before the first page: no await in between
            start = "0"
            while True:
                reply = await self._xreadgroup({stream: start}, RECOVER_PAGE, None)
                entries = reply[0][1] if reply else []
                for entry_id, fields in entries:
                    eid = entry_id.decode()
                    if eid in held:
                        continue
                    if fields:
                        out.append((stream, eid, fields, 1))
                    else:  # trimmed while pending: nothing left to handle
                        await self.redis.xack(stream, self.config.group, eid)
                if len(entries) < RECOVER_PAGE:
                    break
                start = entries[-1][0].decode()
            self._lost.discard(stream)
        if out:
            log.warning(
                "%s: %d entries delivered by a read whose reply was lost; handled now, in order",
                self.config.role,
                len(out),
            )
        return out

    async def _xreadgroup(self, streams: dict[str, str], count: int, block: int | None) -> Any:
        args: list[Any] = ["XREADGROUP", "GROUP", self.config.group, self.name, "COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        args += ["STREAMS", *streams, *streams.values()]
        return await self._once(next(iter(streams)), *args)

    async def _once(self, key: str, *args: Any) -> Any:
        """A command that hands entries to this consumer, sent once whatever happens. If its
        reply is lost the entries are ours all the same; re-sent (redis-py retries on a
        fresh connection) it would hand over the ones after them, and the lost ones would
        come back only as idle, out of order. The caller marks the streams ``_lost``."""
        if self._cluster:
            # An explicit target node: redis-py's cluster client does not retry those (it
            # still follows a MOVED/ASK). The node comes from the slot map, so a failure
            # that made redis-py drop its map has it reloaded first.
            await self.redis.initialize()
            node = self.redis.get_node_from_key(key)  # type: ignore[attr-defined]
            return await self.redis.execute_command(*args, target_nodes=node)  # type: ignore[no-untyped-call]
        async with pooled_connection(self.redis) as conn:
            await conn.send_command(*args)
            return await self.redis.parse_response(conn, args[0])

    async def _claim_due(self, limit: int) -> list[Item]:
        """Entries idle past ``claim_idle_ms`` (any consumer's), with their delivery counts."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_claim < self.config.claim_every:
            return []
        self._last_claim = loop.time()
        try:
            return await self._claim_idle(limit)
        except Exception:
            self._lost.update(self.active_streams())  # what it claimed is ours, unseen
            raise

    async def _claim_idle(self, limit: int) -> list[Item]:
        out: list[Item] = []
        failed: list[Exception] = []
        tried = [s for s in self.active_streams() if self._up(s)]
        for stream in tried:
            try:
                out += await self._claim_stream(stream, limit - len(out))
            except Exception as exc:
                if not (self._cluster and is_transient(exc)):
                    raise
                self._lost.add(stream)  # what it claimed is ours, unseen
                self._failed(stream, exc)
                failed.append(exc)
            if len(out) >= limit:
                break
        if failed and len(failed) == len(tried):
            raise failed[0]
        return out

    async def _claim_stream(self, stream: str, limit: int) -> list[Item]:
        """One partition's entries idle past ``claim_idle_ms``, with their counts."""
        res: Any = await self._once(
            stream,
            "XAUTOCLAIM",
            stream,
            self.config.group,
            self.name,
            self.config.claim_idle_ms,
            "0-0",
            "COUNT",
            min(limit, self.config.count),
        )
        claimed = res[1] if len(res) > 1 else []
        deleted = res[2] if len(res) > 2 else []
        for entry_id in deleted:  # trimmed while pending: nothing left to handle
            await self.redis.xack(stream, self.config.group, entry_id)
        if not claimed:
            return []
        counts = await self._delivery_counts(stream, [eid for eid, _ in claimed])
        return [
            (stream, entry_id.decode(), fields, counts.get(entry_id.decode(), 2))
            for entry_id, fields in claimed
        ]

    async def _delivery_counts(self, stream: str, ids: list[bytes]) -> dict[str, int]:
        lo, hi = min(ids), max(ids)
        pending = await self.redis.xpending_range(
            stream, self.config.group, min=lo, max=hi, count=len(ids) + 100
        )
        out: dict[str, int] = {}
        for item in pending:
            mid = item["message_id"]
            out[mid.decode() if isinstance(mid, bytes) else str(mid)] = int(item["times_delivered"])
        return out

    async def _handle_one(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], deliveries: int
    ) -> _Status:
        try:
            return await self._handle(stream, entry_id, fields, deliveries)
        except Exception as exc:
            if is_transient(exc) or _is_nogroup(exc):  # Redis away: not the entry's fault
                log.warning(
                    "%s: redis error on %s (%s: %s); retrying",
                    self.config.role,
                    entry_id,
                    type(exc).__name__,
                    exc,
                )
                return _Status.RETRY
            if not isinstance(exc, RedisError):
                raise
            # Refused for good (a script or argument error): retrying in place would hold
            # the chat forever; as a failed delivery it is dead-lettered in the end.
            log.exception("%s: redis refused %s; counted as a failure", self.config.role, entry_id)
            return _Status.FAILED

    async def _handle(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], deliveries: int
    ) -> _Status:
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
        lease_valid.set(lambda: self._lease_valid(stream))
        fence.set(self._fence(stream))
        try:
            outcome = await self.handler(stream, entry_id, fields, deliveries)
        except LeaseLost:
            log.warning(
                "%s: partition of %s moved mid-entry; left to its owner", cfg.role, entry_id
            )
            return _Status.LOST
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
            return _Status.FAILED
        if isinstance(outcome, Dead):
            return await self._dead(stream, entry_id, fields, deliveries, outcome)
        return await self._finish(stream, entry_id, outcome)

    async def _finish(
        self, stream: str, entry_id: str, outcome: Ack, dead: Dead | None = None
    ) -> _Status:
        """Write the entry's effects and ack it, retrying Redis errors in place: the
        effects (a reply) must land before the chat's next entry is handled. ``dead``:
        the effects include the entry's dead letter."""
        attempt = 0
        written: set[int] = set()  # effects elsewhere a failed try already wrote
        while True:
            try:
                acked = await self._finish_once(stream, entry_id, outcome, written)
            except Exception as exc:
                if not (is_transient(exc) or isinstance(exc, RelayFullError)):
                    raise  # refused for good: counted as a failed delivery (_handle_one)
                if self.stopping:
                    return _Status.RETRY  # handed back; the next run redoes the entry
                if self.leases is not None and not self._holds(stream):
                    return _Status.LOST
                delay = backoff(attempt, base=0.1, cap=REDIS_RETRY_CAP)
                attempt += 1
                log.warning(
                    "%s: finishing %s failed (%s); retry in %.1fs",
                    self.config.role,
                    entry_id,
                    exc,
                    delay,
                )
                await self._sleep(delay)
                continue
            if acked == LEASE_LOST:
                log.warning(
                    "%s: lease of partition %d lost; %s left for its new owner",
                    self.config.role,
                    self._partition_of[stream],
                    entry_id,
                )
            elif dead is not None:
                self.dead += 1
                log.warning(
                    "dead-lettered %s %s from %s: %s (%s)",
                    self.config.stage.value,
                    entry_id,
                    stream,
                    dead.reason.value,
                    dead.error[:200],
                )
            else:
                self.handled += 1
            return _Status.DONE

    async def _finish_once(
        self, stream: str, entry_id: str, outcome: Ack, written: set[int]
    ) -> int:
        """One FINISH_LUA call (coalesced with other lanes'); -1 if the lease was lost.
        ``written``: indexes of ``outcome.publish`` already written elsewhere (by an
        earlier try of this finish, whose script then failed), updated here."""
        cfg = self.config
        p = self._partition_of[stream]
        publish = list(outcome.publish)
        marker = outcome.marker
        relayed = 0
        relay = self.keys.relay(cfg.role, p)
        if self.relay is not None:
            # A script's keys must share a slot: effects elsewhere go first, unfenced (a
            # repeat publishes a copy the next stage dedupes by id; the marker is a SET).
            # One whose node does not answer goes to the partition's relay instead, in
            # the script: the finish does not wait for that node (``gateway/runtime/relay.py``).
            slot = key_slot(stream.encode())
            if key_slot(relay.encode()) != slot:  # a stream that is no partition of ours
                relay = stream
            local: list[tuple[str, Mapping[str, str | bytes]]] = []
            for i, (s, f) in enumerate(publish):
                if key_slot(s.encode()) == slot:
                    local.append((s, f))
                elif i in written:
                    continue
                elif relay == stream:
                    await self.redis.xadd(s, dict(f))  # type: ignore[arg-type]
                    written.add(i)
                elif await self.relay.write_direct(s, f):
                    written.add(i)
                else:
                    local.append((relay, relay_fields(s, f)))
                    relayed += 1
            publish = local
            if marker is not None and key_slot(marker[0].encode()) != slot:
                await self.redis.set(marker[0], "1", ex=marker[1])
                marker = None
        if self.leases is not None:
            lease, owner = self.keys.lease(cfg.role, p), self.name
        else:
            lease, owner = stream, ""
        keys = [stream, lease, marker[0] if marker else stream, relay, *(s for s, _ in publish)]
        args: list[Any] = [cfg.group, owner, entry_id, str(marker[1]) if marker else "0"]
        args += [relayed, cfg.relay_cap]
        for _, entry in publish:
            args.append(2 * len(entry))
            for k, v in entry.items():
                args += [k, v]
        [acked] = await self._calls.run(("EVALSHA", self._finish_sha, len(keys), *keys, *args))
        if isinstance(acked, Exception):
            raise acked
        if int(acked) == RELAY_FULL:
            raise RelayFullError(f"relay of partition {p} holds {cfg.relay_cap} entries")
        if relayed and int(acked) >= 0 and self.relay is not None:
            self.relay.note_relayed(p, relayed)
        return int(acked)

    async def _dead(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        deliveries: int,
        outcome: Dead,
    ) -> _Status:
        """Dead-letter the entry and ack it: one finish (fenced, atomic with the ack; on a
        cluster the dead letter is written first, or relayed like any effect elsewhere)."""
        letter = dead_fields(
            stage=self.config.stage,
            reason=outcome.reason,
            stream=stream,
            entry_id=entry_id,
            entry=decode_fields(fields),
            attempts=deliveries,
            error=outcome.error,
        )
        effects = Ack(publish=(*outcome.publish, (self.keys.dead, letter)))
        return await self._finish(stream, entry_id, effects, dead=outcome)


def _is_nogroup(exc: BaseException) -> bool:
    """The stream or its consumer group is missing (flushed, a node restarted empty)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


async def run_until_stopped(
    consumers: list[StreamConsumer], stop: asyncio.Event, grace: float
) -> None:
    """Run consumers; on ``stop`` ask them to stop and wait up to ``grace`` seconds."""
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    waiter: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
    for c in consumers:
        c.stop()
    _, still = await asyncio.wait(tasks, timeout=grace)
    for t in still:
        t.cancel()  # in-flight entries stay pending: claimed later, never lost
    await asyncio.gather(*tasks, return_exceptions=True)
    waiter.cancel()
    for t in done:
        error = None if t is waiter or t.cancelled() else t.exception()
        if error is not None:
            raise error
