"""Partition ownership: one live process per partition and role, with leases in Redis.

- Every process heartbeats into ``{prefix}:members:{role}`` (scores are expiry times on
  Redis's clock, so host clocks do not matter); members that stop heartbeating drop out.
- The desired split is computed from the live members alone (``assign``: sorted names,
  round-robin): every process computes the same even split.
- A partition is handled only under its lease ``{prefix}:lease:{role}:{p}`` (SET NX PX,
  renewed by the owner only). A partition that moves away is first drained (the lanes
  finish what they started), then released; the next owner takes it as soon as the lease
  is free or expired, and first finishes the previous owner's pending entries.
- Fencing: a process trusts its lease only until ``renewed_at + 0.8 * ttl`` on its own
  monotonic clock, which ends before Redis expires it. A process frozen (GC pause,
  SIGSTOP) past that stops starting entries of the partition, and its acknowledgements are
  refused by Redis (``ACK_IF_OWNER``) once someone else holds the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

HEARTBEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] stream, KEYS[2] lease; ARGV: group, owner, entry id. -1 = not the owner.
ACK_IF_OWNER = """
if redis.call('GET', KEYS[2]) == ARGV[2] then
  return redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
end
return -1
"""


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
        on_lose: Callable[[int], None],
    ) -> None:
        self.redis = redis
        self.members_key = members_key
        self.lease_key = lease_key
        self.name = name
        self.partitions = partitions
        self.ttl_ms = ttl_ms
        self.on_gain = on_gain
        self.drained = drained
        self.on_lose = on_lose
        self.state: dict[int, State] = {}
        self.valid_until: dict[int, float] = {}
        self.members: list[str] = []
        self._heartbeat = redis.register_script(HEARTBEAT_LUA)
        self._renew = redis.register_script(RENEW_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    @property
    def interval(self) -> float:
        return self.ttl_ms / 1000 / 5

    def valid(self, p: int) -> bool:
        """May this process start work on partition ``p`` now?"""
        return self.valid_until.get(p, 0.0) > time.monotonic()

    def reading(self) -> list[int]:
        """Partitions to read new entries from (owned, valid, not being released)."""
        return sorted(p for p, s in self.state.items() if s is State.OWNED and self.valid(p))

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop``; then drain and release everything."""
        while not stop.is_set():
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                log.warning("leases: redis error (%s)", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def tick(self) -> None:
        started = time.monotonic()
        raw = await self._heartbeat(keys=[self.members_key], args=[self.name, self.ttl_ms])
        self.members = [m.decode() if isinstance(m, bytes) else str(m) for m in raw]
        desired = set(assign(self.members, self.partitions).get(self.name, []))
        for p in list(self.state):
            renewed = await self._renew(keys=[self.lease_key(p)], args=[self.name, self.ttl_ms])
            if not renewed:
                log.warning("leases: lost partition %d (lease taken or expired)", p)
                self._drop(p)
                continue
            self.valid_until[p] = started + 0.8 * self.ttl_ms / 1000
            if p not in desired and self.state[p] is State.OWNED:
                self.state[p] = State.RELEASING  # stop reading; lanes finish their entry
            if self.state[p] is State.RELEASING and self.drained(p):
                await self._release(keys=[self.lease_key(p)], args=[self.name])
                log.info("leases: released partition %d", p)
                self._drop(p)
        for p in sorted(desired - set(self.state)):
            took = await self.redis.set(self.lease_key(p), self.name, nx=True, px=self.ttl_ms)
            if took:
                self.state[p] = State.TAKING  # not read from until the backlog is queued
                self.valid_until[p] = started + 0.8 * self.ttl_ms / 1000
                log.info("leases: took partition %d", p)
                await self.on_gain(p)
                if self.state.get(p) is State.TAKING:
                    self.state[p] = State.OWNED

    def _drop(self, p: int) -> None:
        self.state.pop(p, None)
        self.valid_until.pop(p, None)
        self.on_lose(p)

    async def release_all(self) -> None:
        """On shutdown (after draining): free every lease and leave the membership."""
        for p in list(self.state):
            with contextlib.suppress(RedisError, OSError):  # else it expires by itself
                await self._release(keys=[self.lease_key(p)], args=[self.name])
            self._drop(p)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.zrem(self.members_key, self.name)
