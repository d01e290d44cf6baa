"""A consumer-group loop shared by the worker and the sender (redis-py directly).

- reads every partition of a role with bounded XREADGROUPs and keeps at most
  ``max_in_flight`` entries fetched but unfinished, so a stop leaves little in flight;
  entries waiting on something of their own (a ``Retry`` with ``release``: their bot's
  pipeline is down) are kept apart, up to ``max_waiting``, so they do not stop the reads
  for every other chat and bot;
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
- ``stop()`` stops reading, lets in-flight work finish (``run_until_stopped``'s grace), leaves
  the rest pending for a claim — never dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from gateway.core.backoff import backoff
from gateway.core.contracts import Keys
from gateway.core.metrics import Metrics
from gateway.runtime.batching import Coalescer
from gateway.runtime.cluster import refresh_slots
from gateway.runtime.consumer.base import (
    CLUSTER_BLOCK_MS,
    REDIS_RETRY_CAP,
    ConsumerConfig,
    consumer_name,
    is_nogroup,
)
from gateway.runtime.consumer.lanes import Lanes
from gateway.runtime.consumer.outcome import Handler, Item
from gateway.runtime.consumer.reads import Reads
from gateway.runtime.consumer.trim import Retention
from gateway.runtime.leases import LeaseManager
from gateway.runtime.redis_errors import is_transient
from gateway.runtime.relay import Relay
from gateway.runtime.routing import partitions_of
from gateway.runtime.scripts import FINISH
from gateway.runtime.streams import ensure_group, ensure_groups, is_cluster

log = logging.getLogger(__name__)


class StreamConsumer(Lanes, Reads, Retention):
    """Runs ``handler`` over the role's streams until ``stop()``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        config: ConsumerConfig,
        handler: Handler,
        order_key: Callable[[dict[bytes, bytes]], bytes] = lambda f: (
            f.get(b"bot_id", b"") + b":" + f.get(b"chat_id", b"")
        ),
        name: str | None = None,
        calls: Coalescer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.config = config
        self.handler = handler
        self.order_key = order_key
        self.name = name or consumer_name(config.role)
        self.handled = 0
        self.dead = 0
        self.metrics = m = metrics or Metrics.off()
        kinds = {"worker": "updates", "sender": "outbound", "receipts": "results"}
        kind = kinds.get(config.role, config.role)
        self._claimed = m.child("tg_gateway_stream_claims_total", kind, config.group)
        self._redelivered = m.child("tg_gateway_stream_redeliveries_total", kind, config.group)
        self._stopping = asyncio.Event()
        self._last_claim = 0.0
        self._last_trim = 0.0
        self._trim_task: asyncio.Task[None] | None = None
        self._lanes: dict[tuple[str, bytes], deque[Item]] = {}
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._held: dict[str, set[str]] = defaultdict(set)  # stream -> fetched, unfinished ids
        self._in_flight = 0
        self._waiting = 0
        self._waiting_lanes = set()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._fatal: BaseException | None = None
        self._partition_of = partitions_of(config.streams)
        self._cluster = is_cluster(redis)
        self._calls = calls or Coalescer(redis)  # shared with the handler: fewer pipelines
        self._finish_sha = self._calls.script(FINISH.source)
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
            self.leases.takeovers = m.child("tg_gateway_lease_takeovers_total", config.role)
        m.child("tg_gateway_partitions_owned", config.role).set_function(self._owned)
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
                free = self._free()
                if free <= 0:
                    self._capacity.clear()
                    await self._wait_capacity()
                    continue
                batch = await self._claim_due(free)
                if not batch:
                    batch = await self._read(min(free, self.config.count))
                failures = 0
            except Exception as exc:
                if is_nogroup(exc):
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

    async def _bootstrap(self) -> None:
        attempt = 0
        while not self.stopping:
            try:
                await ensure_groups(self.redis, self.keys)
                if self.config.group_start is not None:
                    await ensure_group(
                        self.redis, self.config.streams, self.config.group, self.config.group_start
                    )
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
