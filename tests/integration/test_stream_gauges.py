"""The Redis-read gauges of a scrape (``StreamGauges``) on a real Redis and a real Redis
Cluster: length, lag (and its fallback count when Redis cannot tell), pending, the oldest
pending and unread ages, the role totals and live members, for partitions with a group,
without one, and not created yet."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import GROUP_SENDERS, GROUP_WORKERS, Keys
from gateway.core.metrics import ROLES, Metrics
from gateway.runtime.metrics_export import StreamGauges

pytestmark = pytest.mark.integration


async def _seed(redis: aioredis.Redis, keys: Keys) -> None:
    now_ms = int(time.time() * 1000)
    up0, up1 = keys.all_updates()
    for i in range(5):  # 10 s old; 3 read, the first of them acknowledged
        await redis.xadd(up0, {"n": str(i)}, id=f"{now_ms - 10_000 + i}-0")
    await redis.xgroup_create(up0, GROUP_WORKERS, id="0")
    read: Any = await redis.xreadgroup(GROUP_WORKERS, "w1", {up0: ">"}, count=3)
    await redis.xack(up0, GROUP_WORKERS, read[0][1][0][0])
    ids = [f"{now_ms - 60_000 + i}-0" for i in range(4)]  # 60 s old, never read
    for entry_id in ids:
        await redis.xadd(up1, {"n": "x"}, id=entry_id)
    await redis.xgroup_create(up1, GROUP_WORKERS, id="0")
    await redis.xdel(up1, ids[1])  # an unread entry deleted: XINFO GROUPS has no lag
    await redis.xadd(keys.all_outbound()[0], {"n": "no group yet"})  # outbound 1: no stream
    await redis.xadd(keys.results, {"r": "1"})
    await redis.xadd(keys.results, {"r": "2"})
    await redis.xadd(keys.dead, {"d": "1"})
    await redis.zadd(keys.members("worker"), {"alive": now_ms + 60_000, "gone": now_ms - 1})


def _values(families: list[Any]) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(v for _, v in sorted(s.labels.items()))): s.value
        for f in families
        for s in f.samples
    }


async def _check(redis: aioredis.Redis, prefix: str) -> None:
    keys = Keys(prefix, 2)
    await _seed(redis, keys)
    metrics = Metrics(ROLES, "run")
    families = await StreamGauges(redis, keys, metrics).read()
    v = _values(families)
    W = GROUP_WORKERS
    assert v[("tg_gateway_stream_length", ("0", "updates"))] == 5
    assert v[("tg_gateway_stream_length", ("1", "updates"))] == 3
    assert v[("tg_gateway_stream_length", ("0", "outbound"))] == 1
    assert v[("tg_gateway_stream_length", ("1", "outbound"))] == 0
    assert v[("tg_gateway_stream_length", ("0", "results"))] == 2
    assert v[("tg_gateway_stream_length", ("0", "dead"))] == 1
    assert v[("tg_gateway_stream_lag", (W, "0", "updates"))] == 2
    assert v[("tg_gateway_stream_pending", (W, "0", "updates"))] == 2
    assert v[("tg_gateway_stream_lag", (W, "1", "updates"))] == 3  # counted: Redis could not
    assert v[("tg_gateway_stream_pending", (W, "1", "updates"))] == 0
    assert 9.0 < v[("tg_gateway_stream_oldest_pending_age_seconds", (W, "0", "updates"))] < 30
    assert v[("tg_gateway_stream_oldest_pending_age_seconds", (W, "1", "updates"))] == 0
    assert not any(k[0] == "tg_gateway_stream_lag" and GROUP_SENDERS in k[1] for k in v)
    assert v[("tg_gateway_role_lag", ("worker",))] == 2 + 2 + 3
    assert 59.0 < v[("tg_gateway_role_oldest_unacked_age_seconds", ("worker",))] < 80
    assert v[("tg_gateway_role_lag", ("sender",))] == 0
    assert v[("tg_gateway_role_members", ("worker",))] == 1
    assert v[("tg_gateway_role_members", ("sender",))] == 0
    names = [f.name for f in families]
    assert names == [
        "tg_gateway_stream_length",
        "tg_gateway_stream_lag",
        "tg_gateway_stream_pending",
        "tg_gateway_stream_oldest_pending_age_seconds",
        "tg_gateway_role_lag",
        "tg_gateway_role_oldest_unacked_age_seconds",
        "tg_gateway_role_members",
    ]


async def test_stream_gauges_on_redis(redis: aioredis.Redis) -> None:
    await _check(redis, "gauges")


async def test_stream_gauges_on_a_redis_cluster(cluster_redis: aioredis.Redis) -> None:
    """The partitions live on different nodes: both pipelined rounds cross them."""
    await _check(cluster_redis, "gauges")
