"""The pipeline's pause: an operator's flag (``Keys.pipeline_paused``, with a TTL) that
every worker honours by handing the pipeline nothing and retrying its updates in place.

Set by ``/admin`` (Telegram) or ``tg-gateway pipeline-pause on|off|status``. A paused
update stays at the head of its chat's lane (a ``Retry`` every ``PAUSE_POLL`` s, no
delivery counted); the chat's later updates wait behind it, and once the lanes are full
the rest waits unread in the stream: nothing is lost, and order within a chat holds.
The flag always expires (``PAUSE_MAX``): a forgotten pause does not hold the bot forever.
Bot commands (/start, /status, /admin, ...) are answered while paused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.contracts import Keys

log = logging.getLogger(__name__)

PAUSE_POLL = 2.0  # seconds between two tries of a paused update
PAUSE_DEFAULT = 3600  # seconds a pause lasts unless the operator says otherwise
PAUSE_MAX = 86_400  # the longest pause anyone may set
REFRESH = 1.0  # a worker reads the flag at most this often (it takes effect within ~1 s)
READ_TIMEOUT = 0.5  # a read that takes longer keeps the last known state


async def set_paused(
    redis: aioredis.Redis, keys: Keys, on: bool, seconds: int = PAUSE_DEFAULT, by: str = ""
) -> None:
    """Pause (for ``seconds``, capped at ``PAUSE_MAX``) or resume the pipeline."""
    if on:
        ttl = max(1, min(int(seconds), PAUSE_MAX))
        await redis.set(keys.pipeline_paused, by or "operator", ex=ttl)
    else:
        await redis.delete(keys.pipeline_paused)


async def pause_left(redis: aioredis.Redis, keys: Keys) -> int | None:
    """Seconds the pause still lasts; None while the pipeline runs."""
    ttl = int(await redis.ttl(keys.pipeline_paused))
    return None if ttl == -2 else max(ttl, 0)


class Calls(Protocol):
    async def run(self, *commands: Any) -> list[Any]: ...


class PauseFlag:
    """The flag as one worker sees it: read through the coalescer at most every
    ``REFRESH`` s; a read that fails or hangs keeps the last known state (a Redis node
    that is away does not stop the chats of the other nodes)."""

    def __init__(self, calls: Calls, key: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._calls = calls
        self._key = key
        self._clock = clock
        self._paused = False
        self._fresh_until = 0.0

    async def paused(self) -> bool:
        now = self._clock()
        if now < self._fresh_until:
            return self._paused
        self._fresh_until = now + REFRESH  # the others use the known state meanwhile
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                [value] = await self._calls.run(("EXISTS", self._key))
        except (TimeoutError, RedisError, OSError) as exc:
            value = exc
        if isinstance(value, Exception):
            log.info("pause flag not read (%s); still %s", value, self._paused)
        else:
            self._paused = bool(value)
        return self._paused

    def known(self, paused: bool) -> None:
        """This process just set or cleared the flag: no need to wait for the next read."""
        self._paused = paused
        self._fresh_until = self._clock() + REFRESH
