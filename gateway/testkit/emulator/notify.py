"""Event-based waiting: coroutines sleep until state changes and a predicate holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Signal:
    """Wakes every waiter on ``fire()``; waiters re-check their predicate (no polling)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def fire(self) -> None:
        """Wake all current waiters (call from the event loop's thread)."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, predicate: Callable[[], T], within: float) -> T:
        """The first truthy ``predicate()`` within ``within`` seconds, else its last value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            result = predicate()
            remaining = deadline - loop.time()
            if result or remaining <= 0:
                return result
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await waiter
            finally:
                self._waiters.discard(waiter)
