"""How long an operator's command (streams, dlq, send, record) waits for Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from gateway.core.errors import RedisUnavailable

T = TypeVar("T")

# In all: the client's own socket timeouts and retries add up to minutes against a hung
# (SIGSTOPped) server.
REDIS_COMMAND_TIMEOUT = 10.0
REDIS_BULK_TIMEOUT = 120.0  # dlq requeue / purge: one round trip per entry


async def bounded(work: Awaitable[T], seconds: float = REDIS_COMMAND_TIMEOUT) -> T:
    """``work`` (a command's Redis session) within ``seconds``, else ``RedisUnavailable``."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise RedisUnavailable(f"no answer within {seconds:.0f} s") from None
