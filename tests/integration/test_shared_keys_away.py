"""Keys outside any partition's slot answering errors (issue 10): on a Redis Cluster their
node can be away while the partition's node answers. A TCP proxy in front of one real
Redis answers the commands naming those keys with ``LOADING`` (what a restarting node
says), everything else goes through.

- The limiter's keys: the sender counts in process at its share and asks Redis at most
  once per ``PROBE_EVERY``; back on the shared limiter once Redis answers.
- The blocked-chat and migration cache keys: best effort. A read that fails is
  "unknown", a write that fails is skipped; no send waits or fails for them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.app.roles import serve_sender
from gateway.core.contracts import Keys, OutboundEntry
from gateway.runtime.streams import connect, ensure_groups, publish_outbound
from gateway.testkit.emulator import Emulator
from gateway.testkit.emulator.limits import max_in_window
from tests.helpers import (
    BOT_ID,
    RedisProxy,
    dead_letters,
    make_config,
    results,
    running,
    wait_for,
)
from workers.sender.limits import Limits
from workers.sender.ratelimit import PROBE_EVERY, RateLimiter

pytestmark = pytest.mark.integration

LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"
FOREVER = 10**6


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[RedisProxy]:
    """A proxy in front of the session's Redis (flushed by the ``redis`` fixture)."""
    p = RedisProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_the_limiter_counts_in_process_at_its_share_while_redis_refuses(
    redis: aioredis.Redis, proxy: RedisProxy
) -> None:
    """While every limiter call is refused, sends are granted in process: at most this
    sender's share of the global limit (two senders assumed: 10 of 20 per second) in any
    window, each chat at its own limit, and Redis asked about once per ``PROBE_EVERY``.
    Once Redis answers, the next probe goes back to the shared limiter and marks the
    recovery window (others may still count in process)."""
    keys = Keys("tg", 4)
    client = connect(proxy.url)
    limiter = RateLimiter(
        client,
        keys,
        BOT_ID,
        Limits(global_per_second=20, chat_per_second=1, margin=0.02),
        assumed_senders=2,
    )
    proxy.arm(b"flood:{", LOADING, FOREVER)  # every limiter script call
    granted: dict[int, list[float]] = {}

    async def send(chat: int) -> None:
        await limiter.acquire(chat)
        granted.setdefault(chat, []).append(time.monotonic())

    try:
        await send(999)  # refused: from now on it counts in process
        assert limiter.degraded
        proxy.injected = 0
        started = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(send(c) for c in range(1000, 1025)), *(send(7) for _ in range(3))),
            timeout=20,
        )
        took = time.monotonic() - started
        assert limiter.degraded and limiter.degraded_grants == 29
        stamps = [t for ts in granted.values() for t in ts]
        assert max_in_window(stamps, 1.0) <= 10
        seven = granted[7]
        assert all(b - a >= 0.95 for a, b in itertools.pairwise(seven))
        # One call per probe, each tried three times by redis-py (LOADING is retried).
        assert proxy.injected <= 3 * (took / PROBE_EVERY + 2), (proxy.injected, took)
        proxy.arm(b"", b"", 0)
        chats = itertools.count(2000)
        await wait_for(
            lambda: _acquired_shared(limiter, next(chats)), timeout=5, message="shared again"
        )
        assert await redis.pttl(keys.rate_recovering(BOT_ID)) > 0
    finally:
        await client.aclose()


async def test_a_blip_one_sender_saw_slows_nobody(redis: aioredis.Redis, proxy: RedisProxy) -> None:
    """One limiter call refused, the next answered: the sender waited ``CONFIRM_AFTER``
    and is back, and the shared limiter is not put at one share (no recovery window):
    it never counted anywhere else. A recovery window here slowed every sender for 5 s
    after each blip (seen as other nodes' partitions at 0.3-0.7 of their rate while one
    node restarted)."""
    keys = Keys("tg", 4)
    client = connect(proxy.url)
    limiter = RateLimiter(client, keys, BOT_ID, Limits(global_per_second=20), assumed_senders=2)
    proxy.arm(b"flood:{", LOADING, 3)  # one call (redis-py tries LOADING three times)
    try:
        await limiter.acquire(1)
        assert not (limiter.degraded or limiter.standby) and limiter.degraded_grants == 0
        assert proxy.injected == 3
        assert await redis.exists(keys.rate_recovering(BOT_ID)) == 0
        wait_g, _ = await limiter.try_acquire(2)
        assert wait_g < 0.06  # one interval of the full 20/s (one share: 0.1 s)
    finally:
        await client.aclose()


async def _acquired_shared(limiter: RateLimiter, chat: int) -> bool:
    await limiter.acquire(chat)
    return not limiter.degraded


async def test_a_blocked_chat_mark_that_cannot_be_read_or_written_holds_no_send(
    redis: aioredis.Redis, proxy: RedisProxy, emu: Emulator
) -> None:
    """Every command on the blocked-chat marks is refused: a reply to a chat goes out
    (its mark is unknown), and a reply to a chat that blocked the bot is dead-lettered
    after one request (its mark cannot be written: skipped), each with one result."""
    well, blocking = 3001, 3002
    emu.add_chat(well, type="private")
    emu.add_chat(blocking, type="private")
    emu.faults.forbid_chat(blocking)
    cfg = make_config(proxy.url, emu.api_url)
    proxy.arm(f"{cfg.keys.prefix}:blocked:".encode(), LOADING, FOREVER)
    replies = [
        OutboundEntry(bot_id=BOT_ID, chat_id=chat, payload={"text": "hi"})
        for chat in (well, blocking)
    ]
    await ensure_groups(redis, cfg.keys)
    await publish_outbound(redis, cfg.keys, replies)
    async with running(lambda stop: serve_sender(cfg, stop)):
        await emu.wait_messages(well, 1, timeout=10)
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), timeout=10, message="letter")
        got = await wait_for(lambda: _results(redis, cfg, 2), timeout=10, message="results")
    assert dead["reason"] == "bot_blocked"
    assert sorted((r["chat_id"], r["ok"]) for r in got) == [(str(well), "1"), (str(blocking), "0")]
    assert emu.stats()["requests"]["sendMessage"] == 2  # one each: nothing retried
    assert proxy.injected >= 1  # the first read was refused; its node then skipped a while
    assert await redis.exists(cfg.keys.blocked_chat(BOT_ID, blocking)) == 0


async def _results(redis: aioredis.Redis, cfg: object, n: int) -> list[dict[str, str]]:
    got = await results(redis, cfg)
    return got if len(got) >= n else []


async def test_a_migration_that_cannot_be_read_or_written_still_reaches_the_new_chat(
    redis: aioredis.Redis, proxy: RedisProxy, emu: Emulator
) -> None:
    """Every command on the migration keys is refused: each reply to the old group id is
    sent there, told the new id (400 migrate_to_chat_id) and sent to it, in order."""
    old, new = -4101, -1004101
    emu.add_chat(old, type="group", title="Old")
    emu.add_chat(new, type="supergroup", title="New")
    emu.faults.migrate_chat(old, new)
    cfg = make_config(proxy.url, emu.api_url, sender={"sender_group_per_minute": 600})
    proxy.arm(f"{cfg.keys.prefix}:migrated:".encode(), LOADING, FOREVER)
    replies = [
        OutboundEntry(bot_id=BOT_ID, chat_id=old, payload={"text": t}) for t in ("one", "two")
    ]
    await ensure_groups(redis, cfg.keys)
    await publish_outbound(redis, cfg.keys, replies)
    async with running(lambda stop: serve_sender(cfg, stop)):
        got = await emu.wait_messages(new, 2, timeout=15)
    assert [m["text"] for m in got] == ["one", "two"]
    assert proxy.injected >= 1
