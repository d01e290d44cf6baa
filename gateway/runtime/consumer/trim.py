"""Retention: trim acknowledged entries past their age, in the background."""

from __future__ import annotations

import asyncio
import logging

from gateway.runtime.consumer.base import TRIM_TIMEOUT, ConsumerState, is_nogroup
from gateway.runtime.redis_errors import is_transient
from gateway.runtime.retention import trim_stream

log = logging.getLogger(__name__)


class Retention(ConsumerState):
    """Each stream of ``config.trim`` trimmed every ``trim_every`` seconds, on its own."""

    def _maintain(self) -> None:
        """Retention: trim acknowledged entries past their age (never unread or pending),
        in the background, each stream on its own: a node that is away (the results
        stream's, a partition's) delays no read and no other stream's trim."""
        loop = asyncio.get_running_loop()
        if not self.config.trim or loop.time() - self._last_trim < self.config.trim_every:
            return
        self._last_trim = loop.time()
        if self._trim_task is None or self._trim_task.done():
            self._trim_task = asyncio.create_task(self._trim_all())

    async def _trim_all(self) -> None:
        outcomes = await asyncio.gather(
            *(
                self._trim(stream, retention, groups)
                for stream, retention, groups in self.config.trim
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                self._fatal = outcome  # not Redis being away: a bug, the role stops
                return

    async def _trim(self, stream: str, retention: float, groups: bool) -> None:
        try:
            async with asyncio.timeout(TRIM_TIMEOUT):
                removed = await trim_stream(self.redis, stream, retention, groups=groups)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or is_transient(exc) or is_nogroup(exc)):
                raise
            log.warning("%s: trimming %s skipped (%s)", self.config.role, stream, exc)
            return
        if removed:
            log.info("%s: trimmed %d entries from %s", self.config.role, removed, stream)
