"""``cancel_and_wait``: the tasks end, their errors stay theirs, the caller's cancel is kept."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.core.tasks import cancel_and_wait


async def test_every_task_ends_and_what_it_raised_stays_with_it() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)  # it raised
    sleeping = asyncio.create_task(asyncio.sleep(60))
    await cancel_and_wait(failed, sleeping, None)
    assert failed.done() and sleeping.cancelled()

    again = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="boom"):  # asked for: raised once all ended
        await cancel_and_wait(again, asyncio.create_task(asyncio.sleep(60)), errors=True)


async def test_a_cancel_of_the_caller_during_the_wait_is_not_swallowed() -> None:
    """The child takes its time to end (cleanup after its cancel); the caller is
    cancelled meanwhile (a shutdown). The old ``suppress(CancelledError)`` around the
    await returned normally here and the caller went on; it must stop."""
    cleaning = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            cleaning.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.5)  # cleanup it finishes even when cancelled again

    went_on = False

    async def caller(child: asyncio.Task[None]) -> None:
        nonlocal went_on
        await cancel_and_wait(child)
        went_on = True

    child = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    outer = asyncio.create_task(caller(child))
    await cleaning.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert not went_on
    await asyncio.wait([child])
