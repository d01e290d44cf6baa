"""The relay's mover ends when its consumer stops, even if a cancel is swallowed.

On Python 3.11, a cancel that races a timeout inside redis-py or ``asyncio.wait_for``
can come out as an ordinary exception. The mover's loop retries Redis failures, so such
a cancel would leave it running, and the consumer's shutdown waiting for it forever.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gateway.runtime.relay import Relay


def _relay() -> Relay:
    return Relay(
        aioredis.Redis(port=1),  # never reached: move() is replaced below
        role="worker",
        key=lambda p: f"t:relay:worker:{{{p}}}",
        partitions=2,
        movable=lambda p: True,
    )


async def _swallowing_move(p: int) -> int:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        raise TimeoutError("a cancel turned into a timeout") from None
    return 0


async def test_a_cancel_turned_into_a_timeout_still_ends_the_mover() -> None:
    relay = _relay()
    relay.move = _swallowing_move  # type: ignore[method-assign]
    task = asyncio.create_task(relay.run(asyncio.Event()))
    await asyncio.sleep(0.05)  # inside move()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=2)


async def test_the_stop_event_ends_the_mover_between_rounds() -> None:
    relay = _relay()
    moves: list[int] = []

    async def move(p: int) -> int:
        moves.append(p)
        return 0

    relay.move = move  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=2)
    assert moves[:2] == [0, 1]  # the first round looked at every partition
