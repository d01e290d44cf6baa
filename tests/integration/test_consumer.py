"""The consumer-group loop on real Redis: order per chat, concurrency, claims, dead letters."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import Keys, Reason, Stage, decode_fields
from gateway.runtime.consumer import (
    FINISH_LUA,
    Ack,
    ConsumerConfig,
    Dead,
    Fence,
    Item,
    Marker,
    Outcome,
    Publish,
    Retry,
    StreamConsumer,
    Write,
)
from gateway.runtime.streams import connect, ensure_groups
from tests.helpers import RedisProcess, RedisProxy, wait_for

pytestmark = pytest.mark.integration

KEYS = Keys("t", 2)
GROUP = "workers"

Handler = Callable[[str, str, dict[bytes, bytes], int], Awaitable[Outcome]]


def consumer(redis: aioredis.Redis, handler: Handler, **kw: object) -> StreamConsumer:
    cfg = ConsumerConfig(
        role=str(kw.pop("role", "worker")),
        group=GROUP,
        stage=Stage.WORKER,
        streams=KEYS.all_updates(),
        count=int(kw.pop("count", 8)),  # type: ignore[call-overload]
        block_ms=50,
        claim_idle_ms=int(kw.pop("claim_idle_ms", 300)),  # type: ignore[call-overload]
        claim_every=0.1,
        max_deliveries=int(kw.pop("max_deliveries", 3)),  # type: ignore[call-overload]
        max_in_flight=int(kw.pop("max_in_flight", 64)),  # type: ignore[call-overload]
        leases=bool(kw.pop("leases", False)),
    )
    name = str(kw["name"]) if "name" in kw else None
    return StreamConsumer(redis, KEYS, cfg, handler, name=name)


async def add(redis: aioredis.Redis, chat: int, seq: int) -> str:
    await ensure_groups(redis, KEYS)
    entry_id = await redis.xadd(KEYS.updates(chat % 2), {"chat_id": str(chat), "seq": str(seq)})
    return str(entry_id.decode())


def seq_of(fields: dict[bytes, bytes]) -> tuple[int, int]:
    return int(fields[b"chat_id"]), int(fields[b"seq"])


async def run_until(c: StreamConsumer, cond: Callable[[], object], timeout: float = 15) -> None:
    task = asyncio.create_task(c.run())
    try:
        await wait_for(cond, timeout=timeout, message="consumer progress")
    finally:
        c.stop()
        await asyncio.wait_for(task, 10)


async def test_per_chat_order_with_chats_in_parallel(redis: aioredis.Redis) -> None:
    seen: dict[int, list[int]] = defaultdict(list)
    active = 0
    peak = 0

    async def handler(item: Item, fence: Fence) -> Outcome:
        nonlocal active, peak
        chat, seq = seq_of(item.fields)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(random.uniform(0, 0.01))
        seen[chat].append(seq)
        active -= 1
        return Ack()

    for seq in range(20):
        for chat in range(10):
            await add(redis, chat, seq)
    c = consumer(redis, handler)
    await run_until(c, lambda: sum(map(len, seen.values())) == 200)
    assert all(seqs == list(range(20)) for seqs in seen.values())
    assert peak > 1
    for stream in KEYS.all_updates():
        assert (await redis.xpending(stream, GROUP))["pending"] == 0


async def test_effects_are_written_with_the_ack(redis: aioredis.Redis) -> None:
    """What a handler returns with its Ack (entries to publish, a marker) lands in the
    same step as the acknowledgement, in each chat's order, also after Redis forgot the
    script (SCRIPT FLUSH: a restart, a failover)."""
    handled = 0

    async def handler(item: Item, fence: Fence) -> Outcome:
        nonlocal handled
        chat, seq = seq_of(item.fields)
        await asyncio.sleep(random.uniform(0, 0.005))
        handled += 1
        if handled == 60:
            await redis.script_flush()
        return Ack(
            (
                Publish(KEYS.outbound(chat % 2), {"chat_id": str(chat), "seq": str(seq)}),
                Marker(f"t:done:{{{chat % 2}}}:{chat}:{seq}", 600),
            )
        )

    for seq in range(20):
        for chat in range(6):
            await add(redis, chat, seq)
    c = consumer(redis, handler)
    await run_until(c, lambda: handled >= 120)
    await wait_for(lambda: _pending_zero(redis), message="every entry acknowledged")
    published: dict[int, list[int]] = defaultdict(list)
    for p in range(2):
        for _, fields in await redis.xrange(KEYS.outbound(p)):
            chat, seq = seq_of(fields)
            published[chat].append(seq)
    assert published == {chat: list(range(20)) for chat in range(6)}
    for chat in range(6):
        ttl = await redis.ttl(f"t:done:{{{chat % 2}}}:{chat}:19")
        assert 0 < ttl <= 600


async def test_a_write_lands_in_the_finish_s_trip_even_when_the_lease_is_gone(
    redis: aioredis.Redis,
) -> None:
    """A ``Write`` (the sender's sent marker: Telegram took the part) is unfenced: it goes
    in the finish's round trip, ahead of the script, and lands even when the script finds
    the lease taken by another process and writes nothing else (no publish, no ack)."""
    await add(redis, 0, 0)
    taken: list[str] = []

    async def handler(item: Item, fence: Fence) -> Outcome:
        await redis.set(fence.lease_key, "someone-else", px=60_000)  # the lease moved
        return Ack(
            (
                Publish("t:out:{0}", {"seq": "0"}),
                Write(("SET", "t:sent:{0}:x", "42", "EX", 600), written=lambda: taken.append("x")),
            )
        )

    c = consumer(redis, handler, leases=True)
    await run_until(c, lambda: taken)
    assert await redis.get("t:sent:{0}:x") == b"42"
    assert 0 < await redis.ttl("t:sent:{0}:x") <= 600
    assert await redis.xlen("t:out:{0}") == 0  # the fenced effects: none
    assert (await redis.xpending(KEYS.updates(0), GROUP))["pending"] == 1  # not acked


@pytest.mark.parametrize("how", ["lease_taken", "stopping"])
async def test_a_finish_that_gives_its_entry_up_makes_its_writes_through_their_fallback(
    own_redis: RedisProcess, how: str
) -> None:
    """Redis goes away between the handler's outcome and its finish; then the partition
    is dropped (a renewal answered that another process holds it now), or the process
    stops: the finish gives the entry up without reaching Redis. Its ``Write`` is a fact
    (the sender's "Telegram took this part") the next owner must see, so the first failed
    try hands it to its ``fallback`` (the sender's marker, retried in place), once, not
    again at each try nor when the entry is given up; ``written`` is not called."""
    redis = connect(own_redis.url)
    calls: list[str] = []

    async def fallback() -> None:
        calls.append("fallback")

    c: StreamConsumer | None = None

    async def handler(item: Item, fence: Fence) -> Outcome:
        assert c is not None and c.leases is not None
        await asyncio.to_thread(own_redis.stop, kill=True)  # before the finish
        c.leases.tick = _frozen  # type: ignore[method-assign]  # no more renewals
        if how == "lease_taken":
            c.leases.state.pop(0)  # what the lease manager does on "lease taken"
        else:
            c.stop()
        written = lambda: calls.append("written")  # noqa: E731
        return Ack((Write(("SET", "t:sent:{0}:x", "1"), written=written, fallback=fallback),))

    try:
        await add(redis, 0, 0)
        c = consumer(redis, handler, leases=True)
        task = asyncio.create_task(c.run())
        await wait_for(lambda: calls, timeout=20, message="the fallback")
        c.stop()
        await asyncio.wait_for(task, 20)
        assert calls == ["fallback"]
    finally:
        if own_redis.proc is None:
            own_redis.start()
        await redis.aclose()


async def _frozen() -> None:
    await asyncio.Event().wait()


async def _pending_zero(redis: aioredis.Redis) -> bool:
    for stream in KEYS.all_updates():
        if (await redis.xpending(stream, GROUP))["pending"]:
            return False
    return True


async def consume_through_cut(redis_url: str, marker: bytes, count: int) -> tuple[list[int], int]:
    """Consume chat 0 through a proxy that drops the reply of the next ``marker`` command;
    the sequence numbers in the order they were handled, and how many replies were cut."""
    seen: list[int] = []

    async def handler(item: Item, fence: Fence) -> Outcome:
        seen.append(seq_of(item.fields)[1])
        return Ack()

    proxy = RedisProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    client = connect(proxy.url)  # as deployed: redis-py retries on a fresh connection
    try:
        proxy.cut_next(marker)
        c = consumer(client, handler, count=count, claim_idle_ms=300)
        await run_until(c, lambda: len(seen) >= 8)
        await asyncio.sleep(0.5)  # past claim_idle_ms: nothing comes back a second time
    finally:
        await client.aclose()
        await proxy.stop()
    return seen, proxy.cuts


async def test_a_read_whose_reply_is_lost_keeps_the_chat_in_order(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """An XREADGROUP that ran in Redis but whose reply never arrived has delivered its
    entries to this consumer: pending, never seen. Reading on (by the client's own retry,
    or the next loop) returns the entries after them, and the lost ones came back only when
    claimed as idle: out of order. The consumer fetches its own pending entries first."""
    for seq in range(8):
        await add(redis, 0, seq)
    seen, cuts = await consume_through_cut(redis_url, b"XREADGROUP", count=2)
    assert cuts == 1
    assert seen == list(range(8))


async def test_a_claim_whose_reply_is_lost_keeps_the_chat_in_order(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """The same for XAUTOCLAIM: a dead consumer's entries claimed in Redis, the reply lost.
    They are ours now with their idle time reset, so no claim returns them for a while."""
    for seq in range(4):
        await add(redis, 0, seq)
    await redis.xreadgroup(GROUP, "dead-consumer", {KEYS.updates(0): ">"}, count=4)
    for seq in range(4, 8):
        await add(redis, 0, seq)
    await asyncio.sleep(0.4)  # the dead consumer's entries are idle past claim_idle_ms
    seen, cuts = await consume_through_cut(redis_url, b"XAUTOCLAIM", count=8)
    assert cuts == 1
    assert seen == list(range(8))


async def test_a_slow_chat_does_not_hold_up_the_others(redis: aioredis.Redis) -> None:
    release = asyncio.Event()
    done: list[int] = []

    async def handler(item: Item, fence: Fence) -> Outcome:
        chat, _ = seq_of(item.fields)
        if chat == 0:
            await release.wait()
        done.append(chat)
        return Ack()

    for seq in range(3):
        await add(redis, 0, seq)
    for seq in range(30):
        await add(redis, 1 + seq % 5, seq)
    c = consumer(redis, handler, count=4)
    task = asyncio.create_task(c.run())
    await wait_for(lambda: len(done) == 30, message="other chats done while chat 0 waits")
    assert 0 not in done
    release.set()
    await wait_for(lambda: done.count(0) == 3, message="chat 0 finishes")
    c.stop()
    await task


async def test_failed_entry_is_retried_then_dead_lettered(redis: aioredis.Redis) -> None:
    attempts: dict[str, list[int]] = defaultdict(list)  # ids repeat across streams

    async def handler(item: Item, fence: Fence) -> Outcome:
        attempts[f"{item.stream}/{item.entry_id}"].append(item.deliveries)
        chat, _ = seq_of(item.fields)
        if chat == 7:
            raise RuntimeError("poison")
        if len(attempts[f"{item.stream}/{item.entry_id}"]) == 1 and chat == 3:
            raise RuntimeError("transient")
        return Ack()

    poison = f"{KEYS.updates(1)}/{await add(redis, 7, 0)}"
    flaky = f"{KEYS.updates(1)}/{await add(redis, 3, 0)}"
    fine = f"{KEYS.updates(0)}/{await add(redis, 4, 0)}"
    c = consumer(redis, handler, max_deliveries=3)

    async def settled() -> bool:
        # The flaky entry's redelivery and the poison's dead letter come in either order
        # (two lanes): stop once both happened.
        return len(attempts[flaky]) >= 2 and await _dead_count(redis, 1)

    await run_until(c, settled)
    assert attempts[flaky] == [1, 2]
    assert attempts[fine] == [1]
    assert attempts[poison] == [1, 2, 3]  # the 4th delivery goes straight to the dead stream
    [(_, dead)] = await redis.xrange(KEYS.dead)
    d = decode_fields(dead)
    assert d["reason"] == Reason.HANDLER_ERROR.value
    assert f"{d['stream']}/{d['entry_id']}" == poison
    assert decode_fields(orjson.loads(d["entry"])) == {"chat_id": "7", "seq": "0"}


async def _dead_count(redis: aioredis.Redis, n: int) -> bool:
    return int(await redis.xlen(KEYS.dead)) >= n


async def test_retry_outcome_waits_in_place_without_using_a_delivery(
    redis: aioredis.Redis,
) -> None:
    """A handler's ``Retry(delay)`` runs the entry again after the delay, ahead of its
    chat's later entries, with the same delivery count (it is not a failure), and it is
    never dead-lettered for it, however many times it asks. The handler sees how many
    times it asked (``retries``) and since when (``since``, set at its first try)."""
    calls: list[tuple[int, int]] = []  # (seq, delivery count) per call, chat 1
    tries: list[tuple[int, float]] = []  # (retries, since) of seq 0's calls
    retries = 5  # more than max_deliveries (3): a retry must not count

    async def handler(item: Item, fence: Fence) -> Outcome:
        nonlocal retries
        _, seq = seq_of(item.fields)
        calls.append((seq, item.deliveries))
        if seq == 0:
            tries.append((item.retries, item.since))
        if seq == 0 and retries:
            retries -= 1
            return Retry(0.02, "not yet")
        return Ack()

    for seq in range(3):
        await add(redis, 1, seq)
    c = consumer(redis, handler)
    await run_until(c, lambda: [s for s, _ in calls][-3:] == [0, 1, 2])
    assert calls == [(0, 1)] * 6 + [(1, 1), (2, 1)]
    assert [r for r, _ in tries] == [0, 1, 2, 3, 4, 5]
    assert len({since for _, since in tries}) == 1 and tries[0][1] > 0
    assert c.handled == 3 and c.dead == 0
    assert await redis.xlen(KEYS.dead) == 0


async def test_dead_outcome_is_dead_lettered_and_acked(redis: aioredis.Redis) -> None:
    async def handler(item: Item, fence: Fence) -> Outcome:
        return Dead(Reason.PIPELINE_REJECTED, "422 nope")

    await add(redis, 1, 0)
    c = consumer(redis, handler)
    await run_until(c, lambda: _dead_count(redis, 1))
    assert (await redis.xpending(KEYS.updates(1), GROUP))["pending"] == 0


async def test_entries_of_a_dead_consumer_are_claimed(redis: aioredis.Redis) -> None:
    await add(redis, 1, 0)
    await add(redis, 1, 1)
    # a consumer that read and then died (kill -9): entries pending under its name
    await redis.xreadgroup(GROUP, "dead-consumer", {KEYS.updates(1): ">"}, count=10)
    got: list[tuple[int, int]] = []

    async def handler(item: Item, fence: Fence) -> Outcome:
        got.append((seq_of(item.fields)[1], item.deliveries))
        return Ack()

    c = consumer(redis, handler, claim_idle_ms=200)
    await run_until(c, lambda: len(got) == 2)
    assert got == [(0, 2), (1, 2)]


async def test_waiting_entries_are_not_stolen_by_another_consumer(redis: aioredis.Redis) -> None:
    """An entry queued in a slow lane must not be claimed and run elsewhere meanwhile."""
    release = asyncio.Event()
    runs: list[str] = []

    async def slow(item: Item, fence: Fence) -> Outcome:
        runs.append(f"a{seq_of(item.fields)[1]}")
        await release.wait()
        return Ack()

    async def other(item: Item, fence: Fence) -> Outcome:
        runs.append(f"b{seq_of(item.fields)[1]}")
        return Ack()

    await add(redis, 1, 0)
    await add(redis, 1, 1)
    a = consumer(redis, slow, claim_idle_ms=200, name="a")
    ta = asyncio.create_task(a.run())
    await wait_for(lambda: runs == ["a0"], message="a holds both entries")
    b = consumer(redis, other, claim_idle_ms=200, name="b")
    tb = asyncio.create_task(b.run())
    await asyncio.sleep(1.0)  # five claim periods of b, well past claim_idle_ms
    assert runs == ["a0"]
    release.set()
    await wait_for(lambda: runs == ["a0", "a1"], message="a finishes in order")
    a.stop()
    b.stop()
    await asyncio.gather(ta, tb)


async def test_stop_hands_back_unstarted_entries(redis: aioredis.Redis) -> None:
    release = asyncio.Event()
    started: list[int] = []

    async def slow(item: Item, fence: Fence) -> Outcome:
        started.append(seq_of(item.fields)[1])
        await release.wait()
        return Ack()

    for seq in range(5):
        await add(redis, 1, seq)
    a = consumer(redis, slow, claim_idle_ms=60_000, name="a")
    ta = asyncio.create_task(a.run())
    await wait_for(lambda: started == [0], message="first entry started")
    a.stop()
    release.set()
    await asyncio.wait_for(ta, 10)
    assert started == [0]  # stopped after the entry in progress
    got: list[int] = []

    async def fast(item: Item, fence: Fence) -> Outcome:
        got.append(seq_of(item.fields)[1])
        return Ack()

    # handed back with idle = claim_idle_ms: another consumer takes them at once
    b = consumer(redis, fast, claim_idle_ms=60_000, name="b")
    await run_until(b, lambda: got == [1, 2, 3, 4], timeout=10)


async def test_survives_a_redis_restart_and_recreates_groups(own_redis: RedisProcess) -> None:
    redis = connect(own_redis.url)
    got: list[int] = []

    async def handler(item: Item, fence: Fence) -> Outcome:
        got.append(seq_of(item.fields)[1])
        return Ack()

    c = consumer(redis, handler)
    task = asyncio.create_task(c.run())
    try:
        await add(redis, 1, 0)
        await wait_for(lambda: got == [0], message="first entry")
        own_redis.stop(kill=True)  # no persistence: streams and groups are gone
        own_redis.start()
        await wait_for(lambda: _add_ok(redis), timeout=15, message="redis back")
        await wait_for(lambda: got == [0, 1], timeout=20, message="entry after restart")
        assert not task.done()
    finally:
        c.stop()
        await asyncio.wait_for(task, 10)
        await redis.aclose()


async def _add_ok(redis: aioredis.Redis) -> bool:
    try:
        await redis.xadd(KEYS.updates(1), {"chat_id": "1", "seq": "1"})
        return True
    except Exception:
        return False


async def test_a_finish_whose_reply_is_lost_publishes_its_entries_once(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """The finish script ran (published, acked) but its reply was cut: the consumer
    retries it. The retry finds the entry no longer pending and writes nothing again, so
    the next stage gets one copy, not two."""
    await add(redis, 0, 0)
    await redis.script_load(FINISH_LUA)  # the cut EVALSHA runs it (no NOSCRIPT round)
    out = "t:out:{0}"
    handled: list[int] = []

    async def handler(item: Item, fence: Fence) -> Outcome:
        handled.append(seq_of(item.fields)[1])
        return Ack((Publish(out, {"seq": item.fields[b"seq"]}),))

    proxy = RedisProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    client = connect(proxy.url)
    try:
        proxy.cut_next(b"EVALSHA")
        c = consumer(client, handler)
        await run_until(c, lambda: c.handled >= 1)
    finally:
        await client.aclose()
        await proxy.stop()
    assert proxy.cuts == 1
    assert handled == [0]
    assert await redis.xlen(out) == 1
    groups = await redis.xinfo_groups(KEYS.updates(0))
    assert [int(g["pending"]) for g in groups] == [0]
