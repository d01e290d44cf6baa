"""The gateway's Redis calls on a real Redis Cluster (three primaries on 127.0.0.1).

Every command or script that touches several keys must find them in one slot, or the
cluster answers CROSSSLOT; these tests run each such path against a real cluster.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError

from gateway.core.contracts import Keys, Reason, Stage, partition_for
from gateway.runtime import dlq
from gateway.runtime.consumer import (
    Ack,
    ConsumerConfig,
    Dead,
    Fence,
    Item,
    Outcome,
    StreamConsumer,
)
from gateway.runtime.streams import UpdatePublisher, connect, ensure_groups, is_cluster
from tests.helpers import (
    BOT_ID,
    RedisClusterProcesses,
    RedisProcess,
    redis_server_binary,
    wait_for,
)
from workers.sender.limits import Limits
from workers.sender.ratelimit import RateLimiter
from workers.sender.standby import standby_index

pytestmark = pytest.mark.integration

P = 8
KEYS = Keys("cz", P)


def slot(key: str) -> int:
    return int(key_slot(key.encode()))


def test_the_keys_one_call_touches_share_a_slot() -> None:
    """What a script, a MULTI or one XREADGROUP names together hashes to one slot."""
    for p in range(P):
        together = {
            KEYS.updates(p),
            KEYS.outbound(p),
            KEYS.dedupe(p, BOT_ID, 1),
            KEYS.sent(p, "r-1"),
            KEYS.handed(p, "tg-1-1"),
            KEYS.lease("worker", p),
            KEYS.lease("sender", p),
        }
        assert len({slot(k) for k in together}) == 1, together
    for chat in (42, -1001, 7, "9"):
        tag = slot(KEYS.updates(partition_for(chat, P, BOT_ID)))
        for key in (
            KEYS.blocked_chat(BOT_ID, chat),
            KEYS.delay_notice(BOT_ID, chat),
            KEYS.migrated(BOT_ID, chat),
        ):
            assert slot(key) == tag, key  # a chat's own keys live with its partition
    limiter = {
        KEYS.rate_global(BOT_ID),
        KEYS.rate_chat(BOT_ID, 42),
        KEYS.rate_chat(BOT_ID, -1001),
        KEYS.flood_wait(BOT_ID, None),
        KEYS.flood_wait(BOT_ID, 42),
    }
    assert len({slot(k) for k in limiter}) == 1, limiter
    assert len({slot(KEYS.updates(p)) for p in range(P)}) == P  # partitions can spread


async def test_partitions_spread_over_the_nodes(cluster_redis: aioredis.Redis) -> None:
    assert is_cluster(cluster_redis)
    nodes = {
        cluster_redis.get_node_from_key(KEYS.updates(p)).name  # type: ignore[attr-defined]
        for p in range(P)
    }
    assert len(nodes) >= 2, nodes


async def test_ingress_publish_dedupes_on_a_cluster(cluster_redis: aioredis.Redis) -> None:
    """Concurrent publishes coalesce into one cluster pipeline; a repeated update_id is
    refused and stored once."""
    await ensure_groups(cluster_redis, KEYS)
    publisher = UpdatePublisher(cluster_redis, KEYS, dedupe_ttl=600)

    async def publish(update_id: int, chat: int) -> bool:
        return await publisher.publish(
            bot_id=BOT_ID,
            update_id=update_id,
            chat_id=chat,
            source="test",
            raw_update=b'{"update_id": %d}' % update_id,
        )

    results = await asyncio.gather(*(publish(u, 1000 + u % 20) for u in range(60)))
    again = await asyncio.gather(*(publish(u, 1000 + u % 20) for u in range(0, 60, 3)))
    assert all(results)
    assert not any(again)
    stored = sum([await cluster_redis.xlen(KEYS.updates(p)) for p in range(P)])
    assert stored == 60
    await publisher.aclose()


async def test_consumers_keep_order_and_dead_letter_on_a_cluster(
    cluster_redis: aioredis.Redis,
) -> None:
    """Two leased consumers over the cluster: every chat's entries in order, a poison
    entry dead-lettered and acknowledged, and a requeue brings it back."""
    await ensure_groups(cluster_redis, KEYS)
    seen: dict[int, list[int]] = defaultdict(list)
    poison_seen = 0

    async def handler(item: Item, fence: Fence) -> Outcome:
        nonlocal poison_seen
        chat, seq = int(item.fields[b"chat_id"]), int(item.fields[b"seq"])
        if chat == 7 and seq == 3 and poison_seen == 0:
            poison_seen += 1
            return Dead(Reason.PIPELINE_REJECTED, "422 from the pipeline")
        seen[chat].append(seq)
        return Ack()

    def make(name: str) -> StreamConsumer:
        cfg = ConsumerConfig(
            role="worker",
            group="workers",
            stage=Stage.WORKER,
            streams=KEYS.all_updates(),
            block_ms=100,
            claim_every=0.1,
            leases=True,
            lease_ttl_ms=1500,
        )
        return StreamConsumer(cluster_redis, KEYS, cfg, handler, name=name)

    consumers = [make("a"), make("b")]
    tasks = [asyncio.create_task(c.run()) for c in consumers]
    for seq in range(10):
        for chat in range(16):
            stream = KEYS.updates(chat % P)
            await cluster_redis.xadd(stream, {"chat_id": str(chat), "seq": str(seq)})
    expected = {c: list(range(10)) for c in range(16)}
    expected[7] = [s for s in range(10) if s != 3]
    await wait_for(lambda: dict(seen) == expected, timeout=30, message="every chat in order")
    dead = await dlq.scan(cluster_redis, KEYS)
    assert [(d.stage, d.reason) for d in dead] == [("worker", "pipeline_rejected")]
    assert await dlq.requeue(cluster_redis, KEYS, dead) == 1
    await wait_for(lambda: seen[7][-1:] == [3], timeout=30, message="the requeued entry")
    assert await dlq.scan(cluster_redis, KEYS) == []
    for c in consumers:
        c.stop()
    await asyncio.gather(*tasks)
    for p in range(P):
        groups = await cluster_redis.xinfo_groups(KEYS.updates(p))
        assert [int(g["pending"]) for g in groups] == [0]


async def test_limiter_on_a_cluster(cluster_redis: aioredis.Redis) -> None:
    """The GCRA script reads the global and the chat budget in one call (one slot)."""
    limits = Limits(global_per_second=1000.0, chat_per_second=1.0)
    limiter = RateLimiter(cluster_redis, KEYS, BOT_ID, limits)
    assert await limiter.try_acquire(42) == (0.0, 0.0)
    wait_global, wait_chat = await limiter.try_acquire(42)
    assert wait_global == 0.0 and wait_chat > 0.5  # one message per second per chat
    assert await limiter.try_acquire(43) == (0.0, 0.0)
    assert await limiter.flood(44, 2.0) is False  # one chat: that chat waits, not the bot
    wait_global, wait_chat = await limiter.try_acquire(44)
    assert wait_chat > 1.0  # Telegram's retry_after holds that chat


async def test_the_limiters_standby_set_lives_on_another_node(
    cluster_redis: aioredis.Redis, redis: aioredis.Redis
) -> None:
    """While the node of the limiter's keys is away, senders use a standby set: it must
    hash to a slot another node serves (else it would be away too), every sender must
    pick the same one, and a single Redis has none (the senders count in process)."""
    k = standby_index(cluster_redis, KEYS, BOT_ID)
    assert k > 0
    node = cluster_redis.get_node_from_key  # type: ignore[attr-defined]
    assert node(KEYS.rate_global(BOT_ID, k)).name != node(KEYS.rate_global(BOT_ID)).name
    for name in (KEYS.rate_chat(BOT_ID, 7, k), KEYS.flood_wait(BOT_ID, None, k)):
        assert node(name).name == node(KEYS.rate_global(BOT_ID, k)).name  # one slot
    assert standby_index(cluster_redis, KEYS, BOT_ID) == k
    assert standby_index(redis, KEYS, BOT_ID) == 0


# --- node faults (issue 10): a node restarted or killed under a running consumer ---------


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterProcesses]:
    """A private three-primary cluster whose nodes this test stops and restarts. Every
    write is on disk before its reply (appendfsync always), so a ``kill -9`` loses
    nothing that was acknowledged: what is measured is the consumer, not the disk."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("node fault tests need a redis-server binary")
    cluster = RedisClusterProcesses(binary)
    for node in cluster.nodes:
        node.appendonly = True
    try:
        cluster.start()
        for node in cluster.nodes:
            _fsync_always(node)
        yield cluster
    finally:
        cluster.close()


def _fsync_always(node: RedisProcess) -> None:
    import redis as sync_redis

    with sync_redis.Redis(port=node.port) as client:
        client.config_set("appendfsync", "always")


async def _cluster_state(node: RedisProcess) -> str:
    client = aioredis.Redis(port=node.port, socket_timeout=1.0)
    try:
        info: Any = await client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        return str(info["cluster_state"])
    except (RedisError, OSError):
        return "unreachable"
    finally:
        await client.aclose()


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "kill-9"])
async def test_a_worker_outlives_a_node_restart(
    own_cluster: RedisClusterProcesses, kill: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10, item 1: workers exited on CLUSTERDOWN (``_claim_due → _claim_idle →
    _once``) after a node restart or a ``kill -9``. Traffic flows while one node goes
    down and the cluster says ``fail`` (every node answers CLUSTERDOWN) for a few
    seconds, then comes back: the consumer keeps running, and every entry is handled
    exactly once."""
    caplog.set_level(logging.WARNING, logger="gateway.runtime.consumer")
    redis = connect(own_cluster.url, cluster=True)
    keys = Keys("nf", 6)
    handled: list[tuple[str, str]] = []
    seqs: set[int] = set()

    async def handler(item: Item, fence: Fence) -> Outcome:
        handled.append((item.stream, item.entry_id))
        seqs.add(int(item.fields[b"seq"]))
        return Ack()

    cfg = ConsumerConfig(
        role="worker",
        group="workers",
        stage=Stage.WORKER,
        streams=keys.all_updates(),
        block_ms=100,
        claim_idle_ms=2000,  # shorter than the outage: its own held entries come back
        claim_every=0.2,
    )
    produced: list[int] = []
    producing = asyncio.Event()
    producing.set()

    async def produce() -> None:
        seq = 0
        while producing.is_set():
            stream = keys.updates(seq % 6)
            try:
                await redis.xadd(stream, {"chat_id": str(seq % 12), "seq": str(seq)})
            except Exception:  # the node of its partition is away: try again
                await asyncio.sleep(0.05)
                continue
            produced.append(seq)
            seq += 1
            await asyncio.sleep(0.01)

    await ensure_groups(redis, keys)
    victim = _default_node(own_cluster, redis)
    witness = next(n for n in own_cluster.nodes if n is not victim)
    c = StreamConsumer(redis, keys, cfg, handler)
    task = asyncio.create_task(c.run())
    producer = asyncio.create_task(produce())
    try:
        await wait_for(lambda: len(handled) >= 50, timeout=20, message="traffic before")
        victim.stop(kill=kill)
        await wait_for(
            lambda: _is(witness, "fail"), timeout=20, message="the cluster sees the node down"
        )
        # Down for 3 s more: every partition's read and claim meets CLUSTERDOWN.
        failed_at = time.monotonic()
        await wait_for(
            lambda: time.monotonic() - failed_at >= 3 or task.done(),
            timeout=10,
            message="3 s of a failed cluster",
        )
        assert not task.done(), task.exception()
        victim.start()
        _fsync_always(victim)
        await wait_for(lambda: _is(witness, "ok"), timeout=30, message="the cluster ok again")
        before = len(handled)
        await wait_for(
            lambda: len(handled) >= before + 50 or task.done(), timeout=20, message="traffic after"
        )
        assert not task.done(), task.exception()
        producing.clear()
        await producer
        await wait_for(
            lambda: seqs >= set(produced) or task.done(), timeout=30, message="every entry"
        )
        assert not task.done(), task.exception()
    finally:
        producing.clear()
        await asyncio.gather(producer, return_exceptions=True)
        c.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)
        await redis.aclose()
    assert seqs >= set(produced)
    assert len(handled) == len(set(handled)), "an entry was handled twice"
    assert "ClusterDownError" in caplog.text  # the outage was met, and waited out


def _default_node(cluster: RedisClusterProcesses, redis: aioredis.Redis) -> RedisProcess:
    """The node the client asks for COMMAND whenever it reloads its slot map: the worst
    one to lose (redis-py's ``initialize`` fails as a whole while it is down)."""
    default = redis.get_default_node()  # type: ignore[attr-defined]
    return next(n for n in cluster.nodes if n.port == int(default.port))


async def _is(node: RedisProcess, state: str) -> bool:
    return await _cluster_state(node) == state


async def test_one_node_down_leaves_the_other_partitions_reading(
    own_cluster: RedisClusterProcesses,
) -> None:
    """Issue 10, item 4 (the consumer's share): with one node down and the others still
    serving their slots (``cluster-require-full-coverage no``), a failed read of the
    down node's partitions was retried as a whole, so no partition was read at all until
    the node came back. Now each partition backs off on its own."""
    import redis as sync_redis

    for node in own_cluster.nodes:
        with sync_redis.Redis(port=node.port) as client:
            client.config_set("cluster-require-full-coverage", "no")
    redis = connect(own_cluster.url, cluster=True)
    keys = Keys("nd", 6)
    await ensure_groups(redis, keys)
    victim = _default_node(own_cluster, redis)
    victim_port = victim.port

    def on_victim(p: int) -> bool:
        node = redis.get_node_from_key(keys.updates(p))  # type: ignore[attr-defined]
        return int(node.port) == victim_port

    handled: set[int] = set()

    async def handler(item: Item, fence: Fence) -> Outcome:
        handled.add(int(item.fields[b"seq"]))
        return Ack()

    cfg = ConsumerConfig(
        role="worker",
        group="workers",
        stage=Stage.WORKER,
        streams=keys.all_updates(),
        block_ms=100,
        claim_every=0.2,
    )
    healthy = [p for p in range(6) if not on_victim(p)]
    assert healthy and len(healthy) < 6, healthy
    c = StreamConsumer(redis, keys, cfg, handler)
    task = asyncio.create_task(c.run())
    try:
        await redis.xadd(keys.updates(healthy[0]), {"chat_id": "0", "seq": "0"})
        await wait_for(lambda: 0 in handled, message="first entry")
        victim.stop(kill=True)
        for seq in range(1, 41):
            p = healthy[seq % len(healthy)]
            await redis.xadd(keys.updates(p), {"chat_id": str(seq % 5), "seq": str(seq)})
        await wait_for(
            lambda: handled >= set(range(41)) or task.done(),
            timeout=10,
            message="the healthy partitions' entries while a node is down",
        )
        assert not task.done(), task.exception()
        assert victim.proc is None  # still down: they were read around it
    finally:
        c.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 15)
        await redis.aclose()
