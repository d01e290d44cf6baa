"""Partition ownership: one live process per partition and role, with leases in Redis.

- Every process heartbeats into ``{prefix}:members:{role}`` (scores are expiry times on
  Redis's clock, so host clocks do not matter); members that stop heartbeating drop out.
- The desired split is computed from the live members alone (``assign``: sorted names,
  round-robin): every process computes the same even split.
- A partition is handled only under its lease ``{prefix}:lease:{role}:{p}`` (SET NX PX,
  renewed by the owner only). A partition that moves away is first drained (the entries
  in progress finish, the unstarted ones are handed back through ``on_release``, and no
  read naming it is still in flight), then released; the next owner takes it as soon as
  the lease is free or expired, waits ``settle`` seconds (longer than any XREADGROUP
  BLOCK the previous owner may still have open, so whatever that read returns is pending
  by then) and first finishes the previous owner's pending entries, in order, before it
  reads new ones. The take-over runs beside the heartbeat: renewing the other leases
  never waits for it.
- Fencing: a process trusts its lease only until ``renewed_at + 0.8 * ttl`` on its own
  monotonic clock, which ends before Redis expires it. A process frozen (GC pause,
  SIGSTOP) past that stops starting entries of the partition, and its acknowledgements
  and their effects are refused by Redis (``scripts.FINISH``) once someone else
  holds the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.backoff import backoff
from gateway.core.metrics import NULL
from gateway.runtime.batching import Coalescer
from gateway.runtime.redis_errors import is_transient
from gateway.runtime.scripts import HEARTBEAT, RELEASE_LEASE, RENEW_LEASE

log = logging.getLogger(__name__)


def assign(members: list[str], partitions: int) -> dict[str, list[int]]:
    """The even split: sorted members, partitions dealt round-robin (pure)."""
    ordered = sorted(set(members))
    out: dict[str, list[int]] = {m: [] for m in ordered}
    if not ordered:
        return out
    for p in range(partitions):
        out[ordered[p % len(ordered)]].append(p)
    return out


class State(Enum):
    TAKING = "taking"  # lease held; the previous owner's pending entries go first
    OWNED = "owned"
    RELEASING = "releasing"


class LeaseManager:
    """Keeps this process's set of partitions in line with the live membership."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        members_key: str,
        lease_key: Callable[[int], str],
        name: str,
        partitions: int,
        ttl_ms: int,
        on_gain: Callable[[int], Awaitable[None]],
        drained: Callable[[int], bool],
        on_release: Callable[[int], Awaitable[None]],
        settle: float = 0.0,
        calls: Coalescer | None = None,
    ) -> None:
        self.redis = redis
        self.members_key = members_key
        self.lease_key = lease_key
        self.name = name
        self.partitions = partitions
        self.ttl_ms = ttl_ms
        self.on_gain = on_gain
        self.drained = drained
        self.on_release = on_release
        self.settle = settle
        self.state: dict[int, State] = {}
        self.valid_until: dict[int, float] = {}
        self._gains: dict[int, asyncio.Task[None]] = {}
        self.members: list[str] = []  # the last membership the heartbeat returned
        self.takeovers: Any = NULL  # a counter of leases taken (the consumer's metrics)
        # The heartbeat and every renewal of a tick share the pipelines (with the
        # consumer's finishes): a process owning many partitions renews them all in one
        # round trip per node, so a slow Redis does not eat into the later leases' trust.
        self._calls = calls or Coalescer(redis)
        self._heartbeat_sha = self._calls.script(HEARTBEAT.source)
        self._renew_sha = self._calls.script(RENEW_LEASE.source)

    @property
    def interval(self) -> float:
        return self.ttl_ms / 1000 / 5

    def valid(self, p: int) -> bool:
        """Does this process still trust its lease on ``p`` (fencing)?"""
        return self.valid_until.get(p, 0.0) > time.monotonic()

    def trust_left(self, p: int) -> float:
        """Seconds this process still trusts its lease on ``p`` (0 or less: none)."""
        return self.valid_until.get(p, 0.0) - time.monotonic()

    def startable(self, p: int) -> bool:
        """May a new entry of ``p`` start: the lease is valid and not being released."""
        return self.valid(p) and self.state.get(p) is not State.RELEASING

    def holds(self, p: int) -> bool:
        """Is ``p`` ours (owned or being taken, not being released), trusted or not?"""
        return self.state.get(p) in (State.OWNED, State.TAKING)

    def reading(self) -> list[int]:
        """Partitions to read new entries from (owned, valid, not being released)."""
        return sorted(p for p, s in self.state.items() if s is State.OWNED and self.valid(p))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` (the caller drains, then calls ``release_all``)."""
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("leases: redis error (%s)", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval)
        finally:
            await self.cancel_gains()

    async def cancel_gains(self) -> None:
        tasks = list(self._gains.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._gains.clear()

    async def tick(self) -> None:
        """Heartbeat, renew every held lease, release what moves away, take what is ours.

        Each call is its own: on a Redis Cluster the heartbeat and each partition's lease
        go to the node owning their slot (``Coalescer`` sends each node's pipeline on its
        own), so a node that is down costs only the leases living on it. A failed
        renewal leaves the partition held but untrusted once its trust runs out (its
        lanes wait; the next answer decides). A failed heartbeat keeps the last
        membership seen: the split, and so every partition this process holds, stays as
        it was until the members key answers again; nobody hands anything away for it.
        """
        started = time.monotonic()
        held = list(self.state)
        heartbeat, *renewals = await asyncio.gather(
            self._call("EVALSHA", self._heartbeat_sha, 1, self.members_key, self.name, self.ttl_ms),
            *(
                self._call("EVALSHA", self._renew_sha, 1, self.lease_key(p), self.name, self.ttl_ms)
                for p in held
            ),
            return_exceptions=True,
        )
        if isinstance(heartbeat, BaseException):
            log.warning("leases: heartbeat failed (%s); keeping the last membership", heartbeat)
        else:
            self.members = [m.decode() if isinstance(m, bytes) else str(m) for m in heartbeat]
        if self.members:
            desired = set(assign(self.members, self.partitions).get(self.name, []))
        else:
            desired = set(held)  # no membership seen yet: keep what we hold, take nothing
        failed: list[tuple[int, BaseException]] = []
        for p, renewed in zip(held, renewals, strict=True):
            if p not in self.state:
                continue  # dropped meanwhile
            if isinstance(renewed, BaseException):
                failed.append((p, renewed))  # trust runs out at its old end; not lost
                continue
            if not renewed:
                log.warning("leases: lost partition %d (lease taken or expired)", p)
                self._drop(p)
                continue
            self.valid_until[p] = started + 0.8 * self.ttl_ms / 1000
            if p not in desired and self.state[p] is State.OWNED:
                self.state[p] = State.RELEASING  # stop reading; lanes finish their entry
            if self.state[p] is State.RELEASING and self.drained(p):
                try:
                    await self.on_release(p)  # while the lease is still ours
                    await RELEASE_LEASE.run(self.redis, [self.lease_key(p)], [self.name])
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("leases: releasing partition %d failed (%s)", p, exc)
                    continue  # still ours and draining: the next tick tries again
                log.info("leases: released partition %d", p)
                self._drop(p)
        if failed:
            log.warning(
                "leases: renewing partitions %s failed (%s)", [p for p, _ in failed], failed[0][1]
            )
        wanted = sorted(desired - set(self.state))
        takes = await asyncio.gather(
            *(
                self._call("SET", self.lease_key(p), self.name, "NX", "PX", self.ttl_ms)
                for p in wanted
            ),
            return_exceptions=True,
        )
        for p, took in zip(wanted, takes, strict=True):
            if isinstance(took, BaseException) or not took or p in self.state:
                continue  # its node is away (tried next tick), or someone holds it
            self.state[p] = State.TAKING  # not read from until the backlog is queued
            self.valid_until[p] = started + 0.8 * self.ttl_ms / 1000
            log.info("leases: took partition %d", p)
            self.takeovers.inc()
            self._gains[p] = asyncio.create_task(self._gain(p))

    async def _call(self, *command: Any) -> Any:
        """One command through the shared pipelines; its own failure raised. Bounded at two
        tick intervals, so a hung node delays neither the tick nor the other leases'
        renewals (a renewal that still runs later only extends a lease we trusted less)."""
        async with asyncio.timeout(2 * self.interval):
            [reply] = await self._calls.run(command)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _gain(self, p: int) -> None:
        """Wait out the previous owner's reads, queue its backlog, then read the partition.

        Retried with backoff while Redis fails; given up when the lease goes (``_drop``
        cancels it)."""
        await asyncio.sleep(self.settle)
        attempt = 0
        while self.state.get(p) is State.TAKING:
            try:
                await self.on_gain(p)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                log.warning("leases: take-over of partition %d failed (%s)", p, exc)
                await asyncio.sleep(backoff(attempt, base=0.1, cap=1.0))  # resume soon after
                continue
            if self.state.get(p) is State.TAKING:
                self.state[p] = State.OWNED
        if self._gains.get(p) is asyncio.current_task():
            del self._gains[p]

    def _drop(self, p: int) -> None:
        gain = self._gains.pop(p, None)
        if gain is not None and gain is not asyncio.current_task():
            gain.cancel()
        self.state.pop(p, None)
        self.valid_until.pop(p, None)

    async def release_all(self) -> None:
        """On shutdown (after draining): free every lease and leave the membership."""
        await self.cancel_gains()
        for p in list(self.state):
            with contextlib.suppress(RedisError, OSError):  # else it expires by itself
                await RELEASE_LEASE.run(self.redis, [self.lease_key(p)], [self.name])
            self._drop(p)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.zrem(self.members_key, self.name)
