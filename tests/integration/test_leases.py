"""Partition leases on real Redis: even split, rebalance, takeover, order, fencing."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict

import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import Keys, Stage
from gateway.runtime.consumer import (
    Ack,
    ConsumerConfig,
    Fence,
    Handler,
    Item,
    LeaseLost,
    Marker,
    Outcome,
    Publish,
    StreamConsumer,
)
from gateway.runtime.leases import assign
from gateway.runtime.streams import ensure_groups
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

P = 8
KEYS = Keys("lz", P)
TTL_MS = 1500


def test_assign_is_even_and_the_same_everywhere() -> None:
    split = assign(["c", "a", "b"], 8)
    assert split == {"a": [0, 3, 6], "b": [1, 4, 7], "c": [2, 5]}
    assert assign(["b", "a", "c", "a"], 8) == split
    assert assign([], 8) == {}
    assert sorted(p for ps in assign(["x"] * 3 + ["y"], 5).values() for p in ps) == list(range(5))


def make(redis: aioredis.Redis, name: str, handler: Handler) -> StreamConsumer:
    cfg = ConsumerConfig(
        role="worker",
        group="workers",
        stage=Stage.WORKER,
        streams=KEYS.all_updates(),
        count=8,
        block_ms=50,
        claim_idle_ms=60_000,
        claim_every=0.1,
        leases=True,
        lease_ttl_ms=TTL_MS,
    )
    return StreamConsumer(redis, KEYS, cfg, handler, name=name)


def owned(consumers: list[StreamConsumer]) -> dict[str, int]:
    return {c.name: len(c.leases.reading()) for c in consumers if c.leases is not None}


async def ack(item: Item, fence: Fence) -> Outcome:
    return Ack()


async def test_split_converges_on_join_and_leave(redis: aioredis.Redis) -> None:
    await ensure_groups(redis, KEYS)
    a = make(redis, "a", ack)
    tasks = {"a": asyncio.create_task(a.run())}
    await wait_for(lambda: owned([a]) == {"a": 8}, message="a owns all")
    b, c = make(redis, "b", ack), make(redis, "c", ack)
    tasks |= {"b": asyncio.create_task(b.run()), "c": asyncio.create_task(c.run())}
    await wait_for(lambda: owned([a, b, c]) == {"a": 3, "b": 3, "c": 2}, message="3/3/2 split")
    owners = [await redis.get(KEYS.lease("worker", p)) for p in range(P)]
    assert Counter(owners) == {b"a": 3, b"b": 3, b"c": 2}
    c.stop()
    await tasks.pop("c")
    await wait_for(lambda: owned([a, b]) == {"a": 4, "b": 4}, message="4/4 after c left")
    for x in (a, b):
        x.stop()
    await asyncio.gather(*tasks.values())
    assert await redis.zcard(KEYS.members("worker")) == 0  # left cleanly


async def test_order_per_chat_while_processes_join_and_leave(redis: aioredis.Redis) -> None:
    await ensure_groups(redis, KEYS)
    seen: dict[int, list[int]] = defaultdict(list)
    active: dict[int, int] = defaultdict(int)
    overlaps = 0

    async def handler(item: Item, fence: Fence) -> Outcome:
        nonlocal overlaps
        chat = int(item.fields[b"chat_id"])
        active[chat] += 1
        overlaps += active[chat] > 1
        await asyncio.sleep(random.uniform(0, 0.004))
        seen[chat].append(int(item.fields[b"seq"]))
        active[chat] -= 1
        return Ack()

    consumers = [make(redis, "a", handler)]
    tasks = [asyncio.create_task(consumers[0].run())]

    async def publish(seq: int) -> None:
        for chat in range(24):
            p = chat % P
            await redis.xadd(KEYS.updates(p), {"chat_id": str(chat), "seq": str(seq)})

    for seq in range(40):
        await publish(seq)
        if seq == 10:
            consumers.append(make(redis, "b", handler))
            tasks.append(asyncio.create_task(consumers[-1].run()))
        if seq == 20:
            consumers.append(make(redis, "c", handler))
            tasks.append(asyncio.create_task(consumers[-1].run()))
        if seq == 30:
            consumers[1].stop()  # b leaves mid-traffic
        await asyncio.sleep(0.02)
    await wait_for(lambda: all(len(seen[c]) >= 40 for c in range(24)), timeout=30, message="all")
    for c in consumers:
        c.stop()
    await asyncio.gather(*tasks)
    assert overlaps == 0, "two processes handled one chat at the same time"
    for chat in range(24):
        # At-least-once: a lease lost mid-entry (a stalled event loop) may let the next
        # owner redo that entry — never one out of order, never a gap.
        assert list(dict.fromkeys(seen[chat])) == list(range(40)), f"chat {chat}: {seen[chat]}"
        assert seen[chat] == sorted(seen[chat]), f"chat {chat} out of order: {seen[chat]}"


async def test_a_frozen_owner_is_fenced_off(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """An owner that stops renewing (a long pause) loses the partition before another
    starts it, starts nothing more, and its late finish is refused: no ack and none of
    its effects (a reply of an entry the new owner redid would come out of order)."""
    await ensure_groups(redis, KEYS)
    release = asyncio.Event()
    log: list[tuple[str, int]] = []

    def effects(who: str, fields: dict[bytes, bytes]) -> Ack:
        seq = fields[b"seq"].decode()
        return Ack(
            (
                Publish(KEYS.outbound(0), {"by": who, "seq": seq}),
                Marker(f"lz:done:{{0}}:{who}:{seq}", 60),
            )
        )

    async def slow(item: Item, fence: Fence) -> Outcome:
        log.append(("a", int(item.fields[b"seq"])))
        await release.wait()
        return effects("a", item.fields)

    async def fast(item: Item, fence: Fence) -> Outcome:
        log.append(("b", int(item.fields[b"seq"])))
        return effects("b", item.fields)

    for seq in range(3):
        await redis.xadd(KEYS.updates(0), {"chat_id": "0", "seq": str(seq)})
    a = make(redis, "a", slow)
    ta = asyncio.create_task(a.run())
    await wait_for(lambda: log == [("a", 0)], message="a starts seq 0")
    assert a.leases is not None

    async def frozen() -> None:
        await asyncio.Event().wait()

    a.leases.tick = frozen  # type: ignore[method-assign]  # no more renewals or heartbeats
    b = make(redis, "b", fast)
    tb = asyncio.create_task(b.run())
    await wait_for(lambda: ("b", 2) in log, timeout=10, message="b takes over and finishes")
    release.set()  # a wakes up after its lease is gone
    # a's late finish of seq 0 is refused by Redis (FINISH_LUA): the consumer says so
    await wait_for(
        lambda: "lease of partition 0 lost" in caplog.text, message="a's late ack refused"
    )
    await asyncio.sleep(0.3)
    assert log == [("a", 0), ("b", 0), ("b", 1), ("b", 2)]
    pending = await redis.xpending(KEYS.updates(0), "workers")
    assert pending["pending"] == 0  # b acknowledged everything
    published = [(f[b"by"], f[b"seq"]) for _, f in await redis.xrange(KEYS.outbound(0))]
    assert published == [(b"b", b"0"), (b"b", b"1"), (b"b", b"2")]
    assert not await redis.exists("lz:done:{0}:a:0")
    assert await redis.exists("lz:done:{0}:b:0")
    for c in (a, b):
        c.stop()
    await asyncio.gather(ta, tb)


async def test_a_backlog_does_not_hold_a_partition_that_moves(redis: aioredis.Redis) -> None:
    """a holds a long backlog (a slow handler: a sender behind a saturated rate limit).
    b joins: a finishes only the entries in progress and hands the rest over, so b gets
    its half of the partitions in about a second, not after a's backlog; order holds."""
    await ensure_groups(redis, KEYS)
    seen: dict[int, list[int]] = defaultdict(list)
    by: dict[str, int] = defaultdict(int)
    active: dict[int, int] = defaultdict(int)
    overlaps = 0

    def handler(name: str) -> Handler:
        async def handle(item: Item, fence: Fence) -> Outcome:
            nonlocal overlaps
            chat = int(item.fields[b"chat_id"])
            active[chat] += 1
            overlaps += active[chat] > 1
            await asyncio.sleep(0.05)  # 60 entries per chat: a 3 s backlog per lane
            seen[chat].append(int(item.fields[b"seq"]))
            by[name] += 1
            active[chat] -= 1
            return Ack()

        return handle

    for seq in range(60):
        for chat in range(P):
            await redis.xadd(KEYS.updates(chat), {"chat_id": str(chat), "seq": str(seq)})
    a = make(redis, "a", handler("a"))
    tasks = [asyncio.create_task(a.run())]
    await wait_for(lambda: owned([a]) == {"a": P} and by["a"] > 0, message="a owns all")
    b = make(redis, "b", handler("b"))
    tasks.append(asyncio.create_task(b.run()))
    joined = asyncio.get_running_loop().time()
    await wait_for(lambda: owned([a, b]) == {"a": 4, "b": 4}, timeout=10, message="4/4 split")
    took = asyncio.get_running_loop().time() - joined
    # Heartbeat ticks (TTL/5), the settle wait (block + 0.5 s), one entry in progress.
    assert took < 2.0, f"split took {took:.1f}s: the backlog held the partitions"
    await wait_for(lambda: all(len(set(seen[c])) == 60 for c in range(P)), timeout=30)
    for c in (a, b):
        c.stop()
    await asyncio.gather(*tasks)
    assert overlaps == 0, "two processes handled one chat at the same time"
    assert by["b"] > 0
    for chat in range(P):
        assert list(dict.fromkeys(seen[chat])) == list(range(60)), f"chat {chat}: {seen[chat]}"
        assert seen[chat] == sorted(seen[chat]), f"chat {chat} out of order: {seen[chat]}"


async def test_a_lapsed_lease_that_comes_back_keeps_the_chat_in_order(
    redis: aioredis.Redis,
) -> None:
    """Trust in a lease lapses while the partition stays ours (Redis away for a moment,
    a late renewal): once right after an entry finished (the next must not start), and
    once mid-entry (the handler sees it and stops: LeaseLost). The lane waits for the
    renewal and goes on in order; nothing is left pending for a claim while the chat's
    later entries are read and handled first."""
    await ensure_groups(redis, KEYS)
    seen: list[int] = []
    lapsed: set[int] = set()
    stream = KEYS.updates(0)

    async def handler(item: Item, fence: Fence) -> Outcome:
        seq = int(item.fields[b"seq"])
        assert a.leases is not None
        if seq in (1, 4) and seq not in lapsed:
            lapsed.add(seq)
            a.leases.valid_until[0] = 0.0  # the next tick renews it (still our lease)
            if seq == 4 and not fence.valid():
                raise LeaseLost  # what the worker does before its pipeline POST
        seen.append(seq)
        if seq == 2:
            await redis.xadd(stream, {"chat_id": "0", "seq": "3"})
        if seq == 4:
            await redis.xadd(stream, {"chat_id": "0", "seq": "6"})
        return Ack()

    a = make(redis, "a", handler)
    task = asyncio.create_task(a.run())
    try:
        await wait_for(lambda: owned([a]) == {"a": P}, message="a owns all")
        for seq in (1, 2):
            await redis.xadd(stream, {"chat_id": "0", "seq": str(seq)})
        await wait_for(lambda: seen == [1, 2, 3], timeout=5, message="1, 2, then 3")
        for seq in (4, 5):
            await redis.xadd(stream, {"chat_id": "0", "seq": str(seq)})
        await wait_for(lambda: seen == [1, 2, 3, 4, 5, 6], timeout=5, message="4, 5, then 6")
    finally:
        a.stop()
        await asyncio.wait_for(task, timeout=20)
    assert lapsed == {1, 4}
    assert (await redis.xpending(stream, "workers"))["pending"] == 0
