"""A circuit breaker for the pipeline: stop hammering a pipeline that is down (pure state).

Closed: calls go through. After ``threshold`` consecutive failures it opens: callers wait
until ``cooldown`` has passed, then one probe goes through (half-open). A success closes
it; a failed probe opens it again. Time comes from an injectable clock for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[], None] = lambda: None,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._on_open = on_open  # counts the openings (metrics)

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.cooldown else "open"

    @property
    def probing(self) -> bool:
        """A half-open probe is out (right after ``wait_time`` gave 0: the caller's)."""
        return self._probing

    def abandon(self) -> None:
        """The probe ended with no answer either way (cancelled): let another probe."""
        self._probing = False

    def wait_time(self) -> float:
        """Seconds until a call may go (0 = now). Takes the probe slot when half-open."""
        if self._opened_at is None:
            return 0.0
        remaining = self._opened_at + self.cooldown - self._clock()
        if remaining > 0:
            return remaining
        if self._probing:
            return min(self.cooldown, 1.0)  # someone is probing: check back soon
        self._probing = True
        return 0.0

    async def ready(self) -> None:
        while (wait := self.wait_time()) > 0:  # noqa: ASYNC110 - waits on time, not an event
            await asyncio.sleep(wait)

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self.threshold):
            self._opened_at = self._clock()
            self._on_open()
        self._probing = False
