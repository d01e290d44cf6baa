"""A single named lease: one process of many holds it and does the work it guards.

The partition leases' scheme (``leases.py``) for one key: the holder sets it with ``PX``
and renews it every ``ttl / 5``; a replica standing by tries to take it as often, so it
takes over within about a ttl of a holder dying (kill -9) and within ``ttl / 5`` of one
releasing it (SIGTERM). One script (``scripts.TAKE_LEASE``) takes and renews; the
ingress's many bots take and renew theirs on one timer (``take_all``, used by
``gateway.ingress.owners``, which runs and cancels each bot's work by these rules).

**What ends a holding.** Redis answering that the key is someone else's (or is not a
lease): the work is cancelled and the process stands by. Redis not answering does not:
the work goes on (a poller holds its offset while it cannot store, as without a lease),
because nobody else can take a lease from a Redis that does not answer, and on a Redis
Cluster a node that is down must not stop a bot's updates (issue 10). When the key's
node answers again the next renewal says whether the lease is still this process's.

**A key holding garbage** (not written by a lease) is logged with what to do, never a
crash: a string without expiry is given one (it can be taken within a ttl), a key of
another type is left alone and this process stands by until an operator deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Sequence
from enum import Enum

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from gateway.core.errors import GatewayError
from gateway.runtime.batching import Coalescer
from gateway.runtime.scripts import RELEASE_LEASE, TAKE_LEASE

log = logging.getLogger(__name__)


class Take(Enum):
    """What Redis answered to a take (or renewal) of the lease."""

    OURS = 1
    HELD = 0  # another process holds it
    NO_EXPIRY = -1  # a string nobody's lease wrote, now given an expiry
    WRONG_TYPE = -2  # not a string: left alone


def lease_owner(role: str) -> str:
    """A name unique per process and per lease object (tests run several in one process)."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class StandBy(GatewayError):  # flow control, like faststream's AckMessage
    """Raised by a lease's work: give the lease up and stand by for a ttl (the work found
    another process doing it, e.g. a second poller). Not an error of the gateway."""


class NamedLease:
    """One Redis key held by at most one process at a time (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, key: str, owner: str, ttl_ms: int) -> None:
        self.redis = redis
        self.key = key
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.held = False  # Redis last said the lease is ours
        self._said: Take | str | None = None  # the last answer logged (logs changes only)

    @property
    def interval(self) -> float:
        """Seconds between two takes or renewals."""
        return self.ttl_ms / 1000 / 5

    async def take(self) -> Take | None:
        """Take or renew the lease; None when Redis did not answer (bounded at two
        intervals). ``held`` follows Redis's answer and stays as it was without one."""
        try:
            async with asyncio.timeout(2 * self.interval):
                reply = await TAKE_LEASE.run(self.redis, [self.key], [self.owner, self.ttl_ms])
            answer = Take(int(reply))
        except (RedisError, RedisClusterException, OSError, TimeoutError, ValueError) as exc:
            self._say(
                f"no answer: {type(exc).__name__}",
                logging.WARNING,
                "lease %s: redis did not answer (%s); %s",
                self.key,
                exc,
                "keeping on while it does not" if self.held else "standing by",
            )
            return None
        return self._took(answer)

    def _took(self, answer: Take) -> Take:
        """Follow and log Redis's answer to a take (``take`` and ``take_all``)."""
        self.held = answer is Take.OURS
        if answer is Take.NO_EXPIRY:
            self._say(
                answer,
                logging.ERROR,
                "lease %s holds a value without expiry, which no lease writes: gave it a "
                "%d ms expiry, so a replica takes the lease once it ends",
                self.key,
                self.ttl_ms,
            )
        elif answer is Take.WRONG_TYPE:
            self._say(
                answer,
                logging.ERROR,
                "lease %s is not a string (not a lease): no replica can take it; delete the "
                "key (redis-cli DEL %s) and one will within %.1fs",
                self.key,
                self.key,
                self.interval,
            )
        else:
            self._say(answer, logging.DEBUG, "lease %s: %s", self.key, answer.name.lower())
        return answer

    def _say(self, what: Take | str, level: int, msg: str, *args: object) -> None:
        if what != self._said:
            self._said = what
            log.log(level, msg, *args)

    async def release(self) -> None:
        """Free the lease if it is ours (bounded; on failure it expires by itself)."""
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(RedisError, RedisClusterException, OSError, TimeoutError):
            async with asyncio.timeout(2 * self.interval):
                await RELEASE_LEASE.run(self.redis, [self.key], [self.owner])


async def take_all(leases: Sequence[NamedLease], calls: Coalescer) -> list[Take | None]:
    """``take`` for many leases on one timer: one round trip per Redis node (``calls``
    coalesces them), each answer followed as ``take`` follows it (None: that lease's
    command was refused). Raises ``RedisError``/``OSError``/``TimeoutError`` when Redis
    did not answer the batch (bounded at two intervals of the first lease): the caller
    says so once, and the leases' ``held`` stay as they were."""
    if not leases:
        return []
    sha = calls.script(TAKE_LEASE.source)
    commands = [("EVALSHA", sha, 1, lease.key, lease.owner, lease.ttl_ms) for lease in leases]
    async with asyncio.timeout(2 * leases[0].interval):
        replies = await calls.run(*commands)
    out: list[Take | None] = []
    for lease, reply in zip(leases, replies, strict=True):
        try:
            if isinstance(reply, Exception):
                raise reply
            out.append(lease._took(Take(int(reply))))
        except (RedisError, ValueError) as exc:
            lease._say(
                f"no answer: {type(exc).__name__}",
                logging.WARNING,
                "lease %s: redis refused the take (%s)",
                lease.key,
                exc,
            )
            out.append(None)
    return out
