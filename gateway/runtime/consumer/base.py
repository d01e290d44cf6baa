"""The consumer's settings (``ConsumerConfig``), its shared state and lease predicates."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.core.backoff import backoff
from gateway.core.contracts import Keys, Stage
from gateway.core.metrics import Metrics
from gateway.runtime.batching import Coalescer
from gateway.runtime.consumer.outcome import Fence, Handler, Item
from gateway.runtime.leases import LeaseManager
from gateway.runtime.relay import RELAY_CAP, Relay

log = logging.getLogger(__name__)

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
    max_in_flight: int = 256
    # Entries waiting in a releasing ``Retry`` (and the rest of their chats' lanes) that
    # do not count against ``max_in_flight``; past it they count again. Memory holds at
    # most max_in_flight + max_waiting entries. 0: every held entry counts.
    max_waiting: int = 0
    # (stream, retention seconds, respect consumer groups) trimmed every ``trim_every``
    trim: tuple[tuple[str, float, bool], ...] = ()
    trim_every: float = 60.0
    # Partition leases: one live process per partition (streams[p] is partition p).
    leases: bool = False
    lease_ttl_ms: int = 5000
    # On a Redis Cluster: entries per partition kept for a stream whose node is away.
    relay_cap: int = RELAY_CAP
    # A group of its own (not the workers' or senders'): created on ``streams`` at this
    # id when missing (``$``: only entries added from then on). None: ``ensure_groups``.
    group_start: str | None = None


def is_nogroup(exc: BaseException) -> bool:
    """The stream or its consumer group is missing (flushed, a node restarted empty)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


class ConsumerState:
    """The state a consumer's parts share (set by ``StreamConsumer.__init__``), and the
    small predicates on it every part asks: may this stream's work start, is its lease
    still ours, is its node worth a try."""

    redis: aioredis.Redis
    keys: Keys
    config: ConsumerConfig
    handler: Handler
    order_key: Callable[[dict[bytes, bytes]], bytes]
    name: str
    handled: int
    dead: int
    metrics: Metrics
    _claimed: Any  # the metrics' children this consumer counts on
    _redelivered: Any
    leases: LeaseManager | None
    relay: Relay | None
    _stopping: asyncio.Event
    _last_claim: float
    _last_trim: float
    _trim_task: asyncio.Task[None] | None
    _lanes: dict[tuple[str, bytes], deque[Item]]
    _lane_tasks: set[asyncio.Task[None]]
    _held: dict[str, set[str]]
    _in_flight: int
    _waiting: int  # held entries of lanes whose head waits in a releasing Retry
    _waiting_lanes: set[tuple[str, bytes]]
    _capacity: asyncio.Event
    _fatal: BaseException | None
    _partition_of: dict[str, int]
    _cluster: bool
    _calls: Coalescer
    _finish_sha: str
    _leases_stop: asyncio.Event
    _relay_stop: asyncio.Event
    _unfinished: dict[str, dict[str, int]]
    _reading: frozenset[str]
    _lost: set[str]
    _down: dict[str, tuple[int, float]]

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

    def _owned(self) -> float:
        """Partitions this process holds (all of them without leases): a scraped gauge."""
        if self.leases is None:
            return float(len(self.config.streams))
        return float(sum(self.leases.holds(p) for p in range(len(self.config.streams))))

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
        """The lease check the handler of one of ``stream``'s entries is given."""
        if self.leases is None:
            return Fence.unfenced(stream)
        p, leases = self._partition_of[stream], self.leases
        return Fence(
            self.keys.lease(self.config.role, p),
            self.name,
            lambda: leases.trust_left(p),
            lambda: leases.startable(p),
            lambda: leases.valid(p),
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

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
