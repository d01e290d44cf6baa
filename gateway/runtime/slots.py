"""After a call to a Redis Cluster node failed: reload the slot map, bounded and rarely.

redis-py's cluster client re-initializes itself on the next command after any node's
connection error, and that fails for every command (closing every node's connections)
while the node it picks first is the one that is down. ``gateway.runtime.cluster.
refresh_slots`` puts the primaries that do not answer last. The degraded paths (the
limiter's probes, the relay, the cache keys) call it through a ``SlotRefresher`` each:
one refresh at a time, at most every ``EVERY`` seconds, bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.runtime.cluster import refresh_slots
from gateway.runtime.redis_errors import is_transient

log = logging.getLogger(__name__)

EVERY = 0.5
TIMEOUT = 1.0


class SlotRefresher:
    """One degraded path's refreshes (a no-op on a single Redis)."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._last = 0.0
        self._running = False

    async def after_failure(self) -> None:
        """Reload the slot map unless one ran in the last ``EVERY`` s or runs now."""
        now = time.monotonic()
        if self._running or now - self._last < EVERY:
            return
        self._running = True
        self._last = now
        try:
            async with asyncio.timeout(TIMEOUT):
                await refresh_slots(self.redis)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc)):
                raise
            log.debug("slot map not reloaded (%s)", type(exc).__name__)
        finally:
            self._running = False
