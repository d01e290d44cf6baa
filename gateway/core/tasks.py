"""Stopping background tasks without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None, errors: bool = False) -> None:
    """Cancel ``tasks`` (None ones skipped) and wait until every one has ended. What one
    raised is retrieved and dropped (the caller wanted it gone), or with ``errors`` the
    first such error is raised once all have ended.

    The pattern this replaces, ``task.cancel()`` then ``with suppress(CancelledError):
    await task``, also swallowed a cancel *of the caller* that arrived during the wait: a
    shutdown's cancel of a role could be lost there, and the role went on. Here the
    caller's own cancel propagates (the tasks stay cancelled; they are not waited for)."""
    given = [t for t in tasks if t is not None]
    for task in given:
        task.cancel()
    if any(not t.done() for t in given):
        await asyncio.wait(given)
    raised = [t.exception() for t in given if not t.cancelled()]  # each one retrieved
    first = next((e for e in raised if e is not None), None)
    if errors and first is not None:
        raise first
