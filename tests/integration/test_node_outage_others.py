"""One Redis Cluster node down stalls only its own partitions, even when it holds what
every partition shares (issue 10): the limiter's keys, the ``results`` and ``dead``
streams.

Each test picks a stream prefix whose shared keys land where the test needs them, stops
that node, and checks that replies on the other nodes' partitions go out and finish.
A private three-primary cluster for this module (``test_node_outage``'s fixtures).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from gateway.app.roles import make_bot
from gateway.core.contracts import GROUP_SENDERS, Keys, OutboundEntry, Stage, partition_for
from gateway.runtime.consumer import ConsumerConfig, StreamConsumer
from gateway.runtime.streams import connect, ensure_groups, publish_outbound
from gateway.testkit.emulator import Emulator, EmulatorLimits
from tests.helpers import (
    BOT_ID,
    BOT_USERNAME,
    TOKEN,
    RedisClusterProcesses,
    RedisProcess,
    make_config,
    redis_server_binary,
    wait_for,
)
from tests.integration.test_node_outage import node_of, restart, stop_node
from workers.sender.bots import SenderBots
from workers.sender.handler import Sender
from workers.sender.limits import Limits
from workers.sender.ratelimit import RateLimiter

pytestmark = pytest.mark.integration

P = 12
TTL_MS = 5000  # the default: no lease runs out while a cluster client reconnects
GLOBAL = 20  # the emulator's and the senders' global limit (Telegram's is 30)
MARGIN = 0.15  # as tests/integration/test_limits.py: jitter of a shared 2-core machine
LIMITS = EmulatorLimits(global_per_second=GLOBAL, chat_per_second=1, group_per_minute=20)


def set_partial_coverage(node: RedisProcess) -> None:
    client = sync_redis.Redis(port=node.port)
    try:
        client.config_set("cluster-require-full-coverage", "no")
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcesses]:
    """Three primaries, ``cluster-require-full-coverage no`` (as ``test_node_outage``)."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("cluster outage tests need a redis-server binary")
    procs = RedisClusterProcesses(binary)
    procs.start()
    for node in procs.nodes:
        set_partial_coverage(node)
    try:
        yield procs
    finally:
        procs.close()


@pytest.fixture
async def client(cluster: RedisClusterProcesses) -> AsyncIterator[aioredis.Redis]:
    """The gateway's cluster client, every primary flushed, every node up again after."""
    c = connect(cluster.url, cluster=True)
    await c.flushall(target_nodes=RedisCluster.PRIMARIES)
    try:
        yield c
    finally:
        await c.aclose()
        for node in cluster.nodes:
            if node.proc is None:
                await restart(cluster, node)


@pytest.fixture
async def limited() -> AsyncIterator[Emulator]:
    """The emulator enforcing the limits with real 429s."""
    emulator = Emulator(token=TOKEN, bot_username=BOT_USERNAME, limits=LIMITS)
    await emulator.start("127.0.0.1", 0)
    try:
        yield emulator
    finally:
        await emulator.stop()


def prefix_where(tag: str, ok: Callable[[Keys], bool]) -> Keys:
    """The first ``Keys`` (prefix ``{tag}{i}``) whose keys land as ``ok`` wants."""
    for i in range(2000):
        keys = Keys(f"{tag}{i}", P)
        if ok(keys):
            return keys
    raise AssertionError("no prefix puts the keys there")


def chats_off(cluster: RedisClusterProcesses, keys: Keys, down: RedisProcess, n: int) -> list[int]:
    """``n`` private chat ids whose outbound partition is not on ``down``."""
    out = []
    for chat in range(5000, 500_000):
        if node_of(cluster, keys.outbound(partition_for(chat, P, BOT_ID))) is not down:
            out.append(chat)
            if len(out) == n:
                return out
    raise AssertionError("not enough chats")


class Senders:
    """Sender processes as the sender role builds them (one cluster client each), run in
    this event loop."""

    def __init__(self, url: str, keys: Keys, api_url: str, names: list[str]) -> None:
        self.keys = keys
        cfg = make_config(
            url,
            api_url,
            redis={
                "redis_cluster": True,
                "stream_prefix": keys.prefix,
                "partitions": P,
                "lease_ttl_ms": TTL_MS,
            },
        )
        tg = cfg.telegram
        limits = Limits(
            global_per_second=GLOBAL, chat_per_second=1, group_per_minute=20, margin=MARGIN
        )
        self.clients: list[aioredis.Redis] = []
        self.senders: list[Sender] = []
        self.consumers: list[StreamConsumer] = []
        self.limiters: list[RateLimiter] = []
        for name in names:
            redis = connect(url, cluster=True)
            limiter = RateLimiter(redis, keys, tg.bot_id, limits)
            bots = SenderBots.single(redis, keys, make_bot(tg), limiter)
            sender = Sender(redis, keys, bots, backoff_max=0.5, name=name)
            consumer = StreamConsumer(
                redis,
                keys,
                ConsumerConfig(
                    role="sender",
                    group=GROUP_SENDERS,
                    stage=Stage.SENDER,
                    streams=keys.all_outbound(),
                    block_ms=200,
                    leases=True,
                    lease_ttl_ms=TTL_MS,
                ),
                sender,
                name=name,
            )
            leases = consumer.leases
            assert leases is not None
            limiter.senders = lambda leases=leases: len(leases.members) or None
            self.clients.append(redis)
            self.senders.append(sender)
            self.consumers.append(consumer)
            self.limiters.append(limiter)
        self.tasks: list[asyncio.Task[None]] = []

    def owned(self) -> bool:
        """Every partition read by one of them, and each has seen all of them."""
        reading = [p for c in self.consumers for p in c.leases.reading()]  # type: ignore[union-attr]
        members = [len(c.leases.members) for c in self.consumers]  # type: ignore[union-attr]
        return sorted(reading) == list(range(P)) and members == [len(self.consumers)] * len(members)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Senders]:
        self.tasks = [asyncio.create_task(c.run()) for c in self.consumers]
        try:
            yield self
        finally:
            for c in self.consumers:
                c.stop()
            try:
                await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)
            finally:  # closed even past the bound: a leak would fail a later test
                for s in self.senders:
                    await s.bots.aclose()
                for redis in self.clients:
                    await redis.aclose()
        for task in self.tasks:  # no role exits
            assert task.exception() is None, task.exception()


def texts(plan: list[OutboundEntry]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for e in plan:
        out.setdefault(int(e.chat_id), []).append(e.payload["text"])
    return out


async def test_replies_go_out_within_the_limits_while_the_limiters_node_is_down(
    cluster: RedisClusterProcesses, client: aioredis.Redis, limited: Emulator
) -> None:
    """The node holding the limiter's keys stops (the results, dead letters and sender
    membership live elsewhere). Two senders keep sending the other nodes' replies, with
    the budget of the standby set on another node (shared and exact, none counted in
    process), and go back to the own set once the node is back: every reply once and in
    order, no 429 from Telegram, no window over a limit, across both switches."""
    keys = prefix_where(
        "lim",
        lambda k: (
            node_of(cluster, k.rate_global(BOT_ID))
            not in {node_of(cluster, s) for s in (k.results, k.dead, k.members("sender"))}
        ),
    )
    down = node_of(cluster, keys.rate_global(BOT_ID))
    chats = chats_off(cluster, keys, down, 75)
    for chat in chats:
        limited.add_chat(chat, type="private")
    plan = [
        OutboundEntry(bot_id=BOT_ID, chat_id=chat, payload={"text": f"c{chat}-{i}"})
        for i in range(2)
        for chat in chats
    ]
    await ensure_groups(client, keys)
    group = Senders(cluster.url, keys, limited.api_url, ["sender-a", "sender-b"])
    async with group.running():
        await wait_for(group.owned, timeout=20, message="every partition owned, both seen")
        await stop_node(down)
        await publish_outbound(client, keys, plan)
        await wait_for(
            lambda: len(limited.sent()) >= 50, timeout=20, message="50 sends while it is down"
        )
        assert all(limiter.standby for limiter in group.limiters)
        standby = group.limiters[0].standby
        assert node_of(cluster, keys.rate_global(BOT_ID, standby)) is not down
        assert {lim.standby for lim in group.limiters} == {standby}  # the same set
        await restart(cluster, down)
        await wait_for(lambda: len(limited.sent()) >= len(plan), timeout=40, message="every reply")
        # Replies after the node is back: a sender leaves the standby at its next counted
        # call (one whose partitions were done before the restart has made none yet).
        after = [
            OutboundEntry(bot_id=BOT_ID, chat_id=chat, payload={"text": f"c{chat}-after"})
            for chat in chats
        ]
        await publish_outbound(client, keys, after)
        plan += after
        await wait_for(lambda: len(limited.sent()) >= len(plan), timeout=40, message="after it")
    for chat, want in texts(plan).items():
        assert [m["text"] for m in limited.messages(chat)] == want, chat
    stats = limited.stats()
    seen = (
        {k: v for k, v in stats.items() if k != "max_chat_1s"},
        [(lim.standby_grants, lim.degraded_grants) for lim in group.limiters],
    )
    assert stats["rejected_429"] == 0, seen
    assert stats["max_global_1s"] <= GLOBAL, seen
    assert all(n <= 1 for n in stats["max_chat_1s"].values()), stats["max_chat_1s"]
    assert all(limiter.standby_grants > 0 for limiter in group.limiters), seen
    assert all(limiter.degraded_grants == 0 for limiter in group.limiters), seen
    assert all(not (limiter.standby or limiter.degraded) for limiter in group.limiters)


async def relayed(client: aioredis.Redis, keys: Keys, down: RedisProcess, cluster: Any) -> int:
    total = 0
    for p in range(P):
        if node_of(cluster, keys.relay("sender", p)) is not down:
            total += int(await client.xlen(keys.relay("sender", p)))
    return total


async def test_senders_finish_while_the_results_node_is_down_and_each_result_lands_once(
    cluster: RedisClusterProcesses, client: aioredis.Redis, emu: Emulator
) -> None:
    """The node holding ``results`` and ``dead`` stops (the limiter and the membership
    live elsewhere). Replies on the other nodes' partitions are sent and acknowledged, each
    chat's second reply after its first, and a reply to a chat that blocked the bot is
    dead-lettered: their results and the dead letter wait in the partitions' relays. Once
    the node is back they are moved: each result in ``results`` exactly once per
    ``reply_id``, the dead letter once, the relays empty."""
    keys = prefix_where(
        "rel",
        lambda k: (
            node_of(cluster, k.results) is node_of(cluster, k.dead)
            and node_of(cluster, k.results)
            not in {node_of(cluster, k.rate_global(BOT_ID)), node_of(cluster, k.members("sender"))}
        ),
    )
    down = node_of(cluster, keys.results)
    chats = chats_off(cluster, keys, down, 21)
    blocked, chats = chats[0], chats[1:]
    for chat in chats:
        emu.add_chat(chat, type="private")
    emu.add_chat(blocked, type="private")
    emu.faults.forbid_chat(blocked)
    plan = [
        OutboundEntry(bot_id=BOT_ID, chat_id=chat, payload={"text": f"c{chat}-{i}"})
        for i in range(2)
        for chat in chats
    ]
    refused = OutboundEntry(bot_id=BOT_ID, chat_id=blocked, payload={"text": "no"})
    await ensure_groups(client, keys)
    group = Senders(cluster.url, keys, emu.api_url, ["sender-a", "sender-b"])
    async with group.running():
        await wait_for(group.owned, timeout=20, message="every partition owned, both seen")
        await stop_node(down)
        await publish_outbound(client, keys, [*plan, refused])
        streams = {keys.outbound(partition_for(e.chat_id, P, BOT_ID)) for e in [*plan, refused]}

        async def finished() -> bool:
            for stream in streams:
                pending: Any = await client.xpending(stream, GROUP_SENDERS)
                if int(pending["pending"]) or int(await client.xlen(stream)) == 0:
                    return False
            return len(emu.sent()) >= len(plan)

        await wait_for(finished, timeout=30, message="every reply sent and acknowledged")
        assert await relayed(client, keys, down, cluster) == len(plan) + 2  # + result, letter
        await restart(cluster, down)

        async def moved() -> bool:
            rows: Any = await client.xrange(keys.results)
            return len(rows) >= len(plan) + 1 and await relayed(client, keys, down, cluster) == 0

        await wait_for(moved, timeout=20, message="the relays moved")
    for chat, want in texts(plan).items():
        assert [m["text"] for m in emu.messages(chat)] == want, chat
    rows: Any = await client.xrange(keys.results)
    ids = Counter(f[b"reply_id"].decode() for _, f in rows)
    assert ids == Counter({e.reply_id: 1 for e in [*plan, refused]})
    outcome = {f[b"reply_id"].decode(): f[b"ok"] for _, f in rows}
    assert outcome[refused.reply_id] == b"0"
    dead: Any = await client.xrange(keys.dead)
    assert [(f[b"reason"], f[b"entry_id"] != b"") for _, f in dead] == [(b"bot_blocked", True)]
