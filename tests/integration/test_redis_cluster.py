"""The gateway's Redis calls on a real Redis Cluster (three primaries on 127.0.0.1).

Every command or script that touches several keys must find them in one slot, or the
cluster answers CROSSSLOT; these tests run each such path against a real cluster.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from gateway import dlq
from gateway.contracts import Keys, Reason, Stage
from gateway.streams import UpdatePublisher, ensure_groups, is_cluster
from tests.helpers import BOT_ID, wait_for
from workers.consumer import Ack, ConsumerConfig, Dead, Outcome, StreamConsumer
from workers.ratelimit import Limits, RateLimiter

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

    async def handler(stream: str, eid: str, fields: dict[bytes, bytes], n: int) -> Outcome:
        nonlocal poison_seen
        chat, seq = int(fields[b"chat_id"]), int(fields[b"seq"])
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
