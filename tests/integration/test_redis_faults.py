"""What a consumer does with each failure Redis can throw at it (real Redis behind a
real TCP proxy that answers chosen commands with a node's error reply).

Transient failures (a cluster healing, a node loading, a failover) are retried with a
backoff and the consumer finishes its entries; permanent ones (a wrong script, a wrong
type) surface at once instead of being retried forever. And a connection closed under a
command, which redis-py 8.1 reports as an AttributeError (redis/redis-py#4287), is a
connection error like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

from gateway.core.contracts import Keys, Stage
from gateway.runtime.consumer import Ack, ConsumerConfig, Fence, Item, Outcome, StreamConsumer
from gateway.runtime.streams import connect, ensure_groups
from tests.helpers import RedisProxy, wait_for

pytestmark = pytest.mark.integration

KEYS = Keys("rf", 2)
GROUP = "workers"
ENTRIES = 12


def consumer(redis: aioredis.Redis, handler: object) -> StreamConsumer:
    cfg = ConsumerConfig(
        role="worker",
        group=GROUP,
        stage=Stage.WORKER,
        streams=KEYS.all_updates(),
        count=4,
        block_ms=50,
        claim_idle_ms=60_000,
        claim_every=0.05,
        max_deliveries=3,
    )
    return StreamConsumer(redis, KEYS, cfg, handler)  # type: ignore[arg-type]


async def fill(redis: aioredis.Redis) -> None:
    await ensure_groups(redis, KEYS)
    for seq in range(ENTRIES):
        await redis.xadd(KEYS.updates(seq % 2), {"chat_id": str(seq % 3), "seq": str(seq)})


@contextlib.asynccontextmanager
async def proxied(redis_url: str) -> AsyncIterator[tuple[RedisProxy, aioredis.Redis]]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = RedisProxy(port)
    await proxy.start()
    client = connect(proxy.url)  # the gateway's own client: pool, retries, timeouts
    try:
        yield proxy, client
    finally:
        await client.aclose()
        await proxy.stop()


# What nodes answer while a cluster heals (the first word is what redis-py maps to a class).
TRANSIENT = [
    b"-CLUSTERDOWN The cluster is down\r\n",
    b"-CLUSTERDOWN Hash slot not served\r\n",
    b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
    b"-LOADING Redis is loading the dataset in memory\r\n",
    b"-READONLY You can't write against a read only replica.\r\n",
    b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
    b"-UNBLOCKED force unblock from blocking operation, instance state changed\r\n",
    b"-MOVED 3999 127.0.0.1:1\r\n",
    b"-ASK 3999 127.0.0.1:1\r\n",
]


def _ids(replies: Iterable[bytes]) -> Iterator[str]:
    for r in replies:
        yield "-".join(w.decode() for w in r[1:].split(b" ")[:2])


@pytest.mark.parametrize("marker", [b"XAUTOCLAIM", b"XREADGROUP"])
@pytest.mark.parametrize("reply", TRANSIENT, ids=list(_ids(TRANSIENT)))
async def test_transient_replies_are_retried(
    redis: aioredis.Redis, redis_url: str, marker: bytes, reply: bytes
) -> None:
    """Item 1 of issue 10: a CLUSTERDOWN (or any reply of a healing cluster) on the
    consumer's claim or read made the worker exit; now it waits and goes on."""
    await fill(redis)
    handled: list[tuple[str, str]] = []

    async def handler(item: Item, fence: Fence) -> Outcome:
        handled.append((item.stream, item.entry_id))
        return Ack()

    async with proxied(redis_url) as (proxy, client):
        proxy.arm(marker, reply, times=3)
        c = consumer(client, handler)
        task = asyncio.create_task(c.run())
        try:
            await wait_for(
                lambda: (proxy.injected == 3 and len(handled) == ENTRIES) or task.done(),
                timeout=20,
                message="entries handled through the errors",
            )
            assert not task.done(), task.exception()
        finally:
            c.stop()
            await asyncio.wait_for(task, 10)
    assert len(handled) == len(set(handled)) == ENTRIES, handled


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"-NOSCRIPT No matching script. Please use EVAL.\r\n", NoScriptError),
        (b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", ResponseError),
    ],
)
async def test_permanent_replies_surface(
    redis: aioredis.Redis, redis_url: str, reply: bytes, error: type[Exception]
) -> None:
    """A refusal that no retry can cure is not retried forever: it stops the consumer."""
    await fill(redis)

    async def handler(item: Item, fence: Fence) -> Outcome:
        return Ack()

    async with proxied(redis_url) as (proxy, client):
        proxy.arm(b"XAUTOCLAIM", reply, times=1)
        c = consumer(client, handler)
        task = asyncio.create_task(c.run())
        try:
            await wait_for(task.done, timeout=10, message="consumer stopped by the error")
        finally:
            c.stop()
        with pytest.raises(error):
            await task
    assert proxy.injected == 1


@pytest.fixture
def closed_under(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The next write of a command containing ``state['marker']`` finds its connection
    closed by redis-py's own ``disconnect()`` between the connected-check and the write:
    what a concurrent disconnect does (a cluster client closes every node's connections,
    in use or not, after a CLUSTERDOWN) in the turn of the event loop that
    ``asyncio.wait_for`` yields before running the write."""
    state: dict[str, object] = {"marker": None, "hits": 0}
    original = AbstractConnection._send_packed_command

    async def write(self: AbstractConnection, command: Iterable[bytes]) -> None:
        command = list(command)
        marker = state["marker"]
        if isinstance(marker, bytes) and any(marker in part for part in command):
            state["marker"] = None
            state["hits"] = int(state["hits"]) + 1  # type: ignore[call-overload]
            await self.disconnect(nowait=True)
        await original(self, command)

    monkeypatch.setattr(AbstractConnection, "_send_packed_command", write)
    return state


@pytest.mark.parametrize("marker", [b"XCLAIM", b"XREADGROUP"])
async def test_a_connection_closed_under_a_command_is_retried(
    redis: aioredis.Redis, redis_url: str, closed_under: dict[str, object], marker: bytes
) -> None:
    """Item 2 of issue 10: ``_keep_held_fresh → xclaim → … self._writer.writelines`` raised
    ``'NoneType' object has no attribute 'writelines'`` out of the worker. XCLAIM goes
    through the client, XREADGROUP through the consumer's send-once pooled connection."""
    await fill(redis)
    handled: list[tuple[str, str]] = []
    release = asyncio.Event()

    async def handler(item: Item, fence: Fence) -> Outcome:
        await release.wait()  # entries wait in their lanes: _keep_held_fresh XCLAIMs them
        handled.append((item.stream, item.entry_id))
        return Ack()

    client = connect(redis_url)
    c = consumer(client, handler)
    task = asyncio.create_task(c.run())
    try:
        await wait_for(lambda: c._in_flight > 0, message="entries in the lanes")
        closed_under["marker"] = marker
        await wait_for(
            lambda: closed_under["hits"] == 1 or task.done(), message="a write on a closed conn"
        )
        assert not task.done(), task.exception()
        release.set()
        await wait_for(
            lambda: len(handled) == ENTRIES or task.done(), timeout=15, message="all handled"
        )
        assert not task.done(), task.exception()
    finally:
        release.set()
        c.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()
    assert len(handled) == len(set(handled)) == ENTRIES, handled
