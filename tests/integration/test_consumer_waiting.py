"""Entries waiting in a releasing ``Retry`` (their bot's pipeline is down) leave the read
capacity to the other chats, up to ``max_waiting``; order and the memory bound hold."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import Keys, Stage
from gateway.runtime.consumer import (
    Ack,
    ConsumerConfig,
    Fence,
    Item,
    Outcome,
    Retry,
    StreamConsumer,
)
from gateway.runtime.streams import ensure_groups
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

KEYS = Keys("t", 1)  # one stream: a read takes COUNT entries in all (not per stream)
A_CHATS = range(1000, 1010)  # the chats of the bot whose pipeline is down
B_CHATS = range(1, 21)


def consumer(
    redis: aioredis.Redis, handler: object, *, in_flight: int, waiting: int
) -> StreamConsumer:
    cfg = ConsumerConfig(
        role="worker",
        group="workers",
        stage=Stage.WORKER,
        streams=KEYS.all_updates(),
        count=4,
        block_ms=50,
        claim_idle_ms=2000,
        claim_every=0.1,
        max_in_flight=in_flight,
        max_waiting=waiting,
    )
    return StreamConsumer(redis, KEYS, cfg, handler)  # type: ignore[arg-type]


async def add(redis: aioredis.Redis, chat: int, seq: int) -> None:
    await redis.xadd(KEYS.updates(0), {"chat_id": str(chat), "seq": str(seq)})


class Handler:
    """Chats of A retry (releasing, or not) until ``a_up``; everything else is acked.
    Records each chat's handled sequence and the held entries seen at every call."""

    def __init__(self, consumer_of: Callable[[], StreamConsumer], release: bool) -> None:
        self.a_up = False
        self.release = release
        self.done: dict[int, list[int]] = defaultdict(list)
        self.waiting_a: set[int] = set()
        self.held_peak = 0
        self._consumer = consumer_of

    async def __call__(self, item: Item, fence: Fence) -> Outcome:
        self.held_peak = max(self.held_peak, self._consumer()._in_flight)
        chat, seq = int(item.fields[b"chat_id"]), int(item.fields[b"seq"])
        if chat in A_CHATS and not self.a_up:
            self.waiting_a.add(chat)
            return Retry(0.05, "pipeline down", release=self.release)
        self.done[chat].append(seq)
        return Ack()

    def b_handled(self) -> int:
        return sum(len(self.done[c]) for c in B_CHATS)


async def test_chats_waiting_on_their_pipeline_leave_the_reads_to_the_others(
    redis: aioredis.Redis,
) -> None:
    """Ten chats of A (three entries each) wait with ``max_in_flight`` 4: B's 200
    entries are all handled meanwhile; once A is up its chats finish, each in order."""
    await ensure_groups(redis, KEYS)
    for seq in range(3):
        for chat in A_CHATS:
            await add(redis, chat, seq)
    for seq in range(10):
        for chat in B_CHATS:
            await add(redis, chat, seq)
    c: StreamConsumer
    handler = Handler(lambda: c, release=True)
    c = consumer(redis, handler, in_flight=4, waiting=100)
    task = asyncio.create_task(c.run())
    try:
        await wait_for(lambda: handler.b_handled() == 200, message="B's 200 entries")
        assert handler.waiting_a == set(A_CHATS)  # every chat of A waits, none done
        assert not any(handler.done[c] for c in A_CHATS)
        handler.a_up = True
        await wait_for(
            lambda: all(len(handler.done[c]) == 3 for c in A_CHATS), message="A catches up"
        )
    finally:
        c.stop()
        await asyncio.wait_for(task, 10)
    assert all(handler.done[c] == [0, 1, 2] for c in A_CHATS)
    assert all(handler.done[c] == list(range(10)) for c in B_CHATS)
    assert handler.held_peak <= 4 + 100
    for stream in KEYS.all_updates():
        assert (await redis.xpending(stream, "workers"))["pending"] == 0


async def test_waiting_entries_past_max_waiting_hold_the_reads_again(
    redis: aioredis.Redis,
) -> None:
    """The memory bound: with ``max_in_flight`` 2 and ``max_waiting`` 3 the consumer never
    holds more than 5 entries, however many chats of A wait; B goes on once A is up."""
    await ensure_groups(redis, KEYS)
    for chat in A_CHATS:
        await add(redis, chat, 0)
    for chat in B_CHATS:
        await add(redis, chat, 0)
    c: StreamConsumer
    handler = Handler(lambda: c, release=True)
    c = consumer(redis, handler, in_flight=2, waiting=3)
    task = asyncio.create_task(c.run())
    try:
        await wait_for(lambda: len(handler.waiting_a) >= 5, message="A's chats fill the bound")
        assert c._in_flight <= 5
        handler.a_up = True
        await wait_for(lambda: handler.b_handled() == len(B_CHATS), message="B's entries")
        await wait_for(lambda: all(handler.done[c] == [0] for c in A_CHATS), message="A's")
    finally:
        c.stop()
        await asyncio.wait_for(task, 10)
    assert handler.held_peak <= 5


async def test_a_retry_that_does_not_release_keeps_its_share_of_the_reads(
    redis: aioredis.Redis,
) -> None:
    """A plain ``Retry`` (the pause, a rate-limit wait) holds the read capacity as before:
    with four chats of A waiting and ``max_in_flight`` 4 nothing else is read."""
    await ensure_groups(redis, KEYS)
    for chat in list(A_CHATS)[:4]:
        await add(redis, chat, 0)
    c: StreamConsumer
    handler = Handler(lambda: c, release=False)
    c = consumer(redis, handler, in_flight=4, waiting=100)
    task = asyncio.create_task(c.run())
    try:
        await wait_for(lambda: len(handler.waiting_a) == 4, message="A's four chats wait")
        for chat in B_CHATS:
            await add(redis, chat, 0)
        # Each waiting lane tries again every 50 ms: 20 tries in all, and still no read.
        tries = {"n": 0}
        inner = handler.__call__

        async def counting(item: Item, fence: Fence) -> Outcome:
            tries["n"] += 1
            return await inner(item, fence)

        c.handler = counting
        await wait_for(lambda: tries["n"] >= 20, message="twenty tries of A's lanes")
        assert handler.b_handled() == 0 and c._in_flight == 4
        handler.a_up = True
        await wait_for(lambda: handler.b_handled() == len(B_CHATS), message="B once A is up")
    finally:
        c.stop()
        await asyncio.wait_for(task, 10)
