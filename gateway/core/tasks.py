"""Stopping background tasks without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None, errors: bool = False) -> None:
    """Cancel ``tasks`` and wait until every one has ended. What one raised is retrieved
    and dropped (the caller wanted it gone), or with ``errors`` the first such error is
    raised once all have ended.

    The pattern this replaces, ``task.cancel()`` then ``with suppress(CancelledError):
    await task``, also swallowed a cancel *of the caller* that arrived during the wait: a
    shutdown's cancel of a role could be lost there, and the role went on. Here the
    caller's own cancel propagates (the tasks stay cancelled; they are not waited for)."""
    await cancel_all((t for t in tasks if t is not None), errors=errors)


async def cancel_all(tasks: Iterable[asyncio.Future[Any]], *, errors: bool = False) -> None:
    """``cancel_and_wait`` for an iterable of tasks."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if any(not t.done() for t in tasks):
        await asyncio.wait(tasks)
    raised = [t.exception() for t in tasks if not t.cancelled()]  # each one retrieved
    first = next((e for e in raised if e is not None), None)
    if errors and first is not None:
        raise first
