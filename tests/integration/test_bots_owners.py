"""One owner per bot across ingress replicas (issue 15): the holder of a bot's lease alone
registers its webhook (or polls it); bots added while running get theirs, removed ones
have theirs deleted; a 401 on one bot stops only that bot's owner (real Redis, two
replicas in-process, one emulator serving every bot)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.bots import BotSpec, BotsSettings, bot_id_of, derive_webhook_secret
from gateway.core.contracts import Keys
from gateway.core.errors import TelegramFatal
from gateway.core.settings import load
from gateway.ingress.serve import serve_ingress
from gateway.testkit.emulator import Emulator
from gateway.testkit.emulator.core import EmulatorCore
from tests.helpers import BOT_ID, TOKEN, free_port, make_config, wait_for

pytestmark = pytest.mark.integration

TOKEN_B = "7689012346:BOTBbotbBOTBbotbBOTBbotbBOTBbotb00"
TOKEN_C = "7689012347:BOTCbotcBOTCbotcBOTCbotcBOTCbotc00"
ALICE = 6123456789
TTL_MS = 1000
KEYS = Keys("tg", 16)


def spec(name: str, token: str, **kw: Any) -> BotSpec:
    return BotSpec(
        bot_id=bot_id_of(token),
        token=token,
        name=name,
        path_key=secrets.token_urlsafe(24),
        webhook_secret=secrets.token_urlsafe(32),
        source="redis",
        **kw,
    ).check()


async def put(redis: aioredis.Redis, bot: BotSpec) -> None:
    await redis.hset(KEYS.bots, str(bot.bot_id), orjson.dumps(bot.to_record()))


@pytest.fixture
async def emu3(emu: Emulator) -> tuple[Emulator, EmulatorCore, EmulatorCore]:
    """The emulator's first bot (the default one) and two more."""
    return emu, emu.add_bot(TOKEN_B, username="brand_b_bot"), emu.add_bot(TOKEN_C)


def requests(core: EmulatorCore, method: str) -> int:
    return int(core.stats()["requests"].get(method, 0))


@contextlib.asynccontextmanager
async def replica(cfg: Any) -> AsyncIterator[asyncio.Task[None]]:
    """One ingress replica, ready; stopped gracefully (SIGTERM's path) on exit."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve_ingress(
            cfg.telegram, cfg.redis, cfg.pipeline, cfg.ingress, 60.0, stop, ready, bots=cfg.bots
        )
    )
    try:
        await asyncio.wait({task, asyncio.create_task(ready.wait())}, timeout=15,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if task.done():
            await task
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


def config(redis_url: str, emu: Emulator, *, webhook_port: int | None = None, **tg: Any) -> Any:
    """A replica's settings: webhook mode when ``webhook_port`` names the replica Telegram
    reaches (every bot's URL is on it), else polling."""
    telegram: dict[str, Any] = {"webhook_check_seconds": 0.3, **tg}
    if webhook_port is not None:
        telegram["telegram_mode"] = "webhook"
        telegram["telegram_webhook_url"] = f"http://127.0.0.1:{webhook_port}/webhook/telegram"
    cfg = make_config(
        redis_url, emu.api_url, telegram=telegram, redis={"lease_ttl_ms": TTL_MS, "partitions": 16}
    )
    cfg.bots = load(BotsSettings, bots_refresh_seconds=0.2)
    return cfg


async def stored_by_bot(redis: aioredis.Redis) -> dict[int, int]:
    counts: dict[int, int] = {}
    for stream in KEYS.all_updates():
        for _, fields in await redis.xrange(stream):
            bot_id = int(fields[b"bot_id"])
            counts[bot_id] = counts.get(bot_id, 0) + 1
    return counts


# --- webhook mode ---------------------------------------------------------------------------


async def test_two_replicas_register_each_bots_webhook_exactly_once_with_its_own_secret(
    redis: aioredis.Redis, redis_url: str, emu3: tuple[Emulator, EmulatorCore, EmulatorCore]
) -> None:
    """Started at once, the replicas race for three leases: each bot's webhook is set once,
    on its own path with its own secret and allowed updates, and Telegram's deliveries to
    each land as that bot's updates."""
    emu, b_core, c_core = emu3
    b = spec("brand-b", TOKEN_B, allowed_updates=("message",))
    c = spec("brand-c", TOKEN_C)
    await put(redis, b)
    await put(redis, c)
    port = free_port()
    a_cfg = config(redis_url, emu, webhook_port=port)
    a_cfg.ingress = a_cfg.ingress.model_copy(update={"ingress_port": port})
    b_cfg = config(redis_url, emu, webhook_port=port)
    async with contextlib.AsyncExitStack() as one, contextlib.AsyncExitStack() as two:
        await asyncio.gather(
            one.enter_async_context(replica(a_cfg)), two.enter_async_context(replica(b_cfg))
        )
        for core, bot in ((b_core, b), (c_core, c)):
            await wait_for(lambda core=core: core.state.webhook is not None, message="set")
            hook = core.state.webhook
            assert hook is not None
            assert hook.url == f"http://127.0.0.1:{port}/webhook/{bot.path_key}"
            assert hook.secret_token == bot.webhook_secret
        assert emu.state.webhook is not None and emu.state.webhook.url.endswith("/telegram")
        assert emu.state.webhook.secret_token == derive_webhook_secret(TOKEN)
        assert b_core.state.webhook is not None and b_core.state.webhook.allowed_updates == [
            "message"
        ]
        for core in (emu, b_core, c_core):  # the watchdogs run: checks keep coming
            checks = requests(core, "getWebhookInfo")
            await wait_for(lambda core=core, n=checks: requests(core, "getWebhookInfo") > n)
        for core in (emu, b_core, c_core):
            core.user_send(user_id=ALICE, text="by webhook")
        want = {BOT_ID: 1, b.bot_id: 1, c.bot_id: 1}
        await wait_for(lambda: _is(stored_by_bot(redis), want), message="one update per bot")
        assert [requests(core, "setWebhook") for core in (emu, b_core, c_core)] == [1, 1, 1]


async def _is(counts: Any, want: dict[int, int]) -> bool:
    return bool(await counts == want)


async def test_a_bot_added_while_running_is_registered_and_a_removed_one_deleted(
    redis: aioredis.Redis, redis_url: str, emu3: tuple[Emulator, EmulatorCore, EmulatorCore]
) -> None:
    """`bots add` while the replicas run: the bot's webhook is registered (once). `bots
    remove` (removing_since): the holder deletes it, and keeps the lease until the record
    is gone, then releases it."""
    emu, b_core, _ = emu3
    port = free_port()
    a_cfg = config(redis_url, emu, webhook_port=port)
    a_cfg.ingress = a_cfg.ingress.model_copy(update={"ingress_port": port})
    b_cfg = config(redis_url, emu, webhook_port=port)
    b = spec("brand-b", TOKEN_B)
    lease = KEYS.webhook_lease(b.bot_id)
    async with replica(a_cfg), replica(b_cfg):
        await put(redis, b)
        await wait_for(lambda: b_core.state.webhook is not None, message="registered")
        assert b_core.state.webhook is not None
        assert b_core.state.webhook.url.endswith(f"/webhook/{b.path_key}")
        await put(redis, spec("brand-b", TOKEN_B, removing_since=time.time()))
        await wait_for(lambda: b_core.state.webhook is None, message="its webhook deleted")
        assert await redis.exists(lease)  # still held while it is listed as removing
        await redis.hdel(KEYS.bots, str(b.bot_id))
        await wait_for(lambda: _gone(redis, lease), message="its lease released")
        assert requests(b_core, "setWebhook") == 1
        assert requests(b_core, "deleteWebhook") == 1


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


# --- polling mode -----------------------------------------------------------------------


async def test_each_bot_is_polled_by_one_replica_and_taken_over_when_it_stops(
    redis: aioredis.Redis, redis_url: str, emu3: tuple[Emulator, EmulatorCore, EmulatorCore]
) -> None:
    """Polling: three bots, two replicas; each bot's lease has one holder; the holder
    stopping (its leases released) hands every bot it polled to the other replica;
    nothing is lost or doubled."""
    emu, b_core, c_core = emu3
    await put(redis, spec("brand-b", TOKEN_B))
    await put(redis, spec("brand-c", TOKEN_C))
    cores = (emu, b_core, c_core)
    ids = [BOT_ID, bot_id_of(TOKEN_B), bot_id_of(TOKEN_C)]
    async with contextlib.AsyncExitStack() as first:
        await first.enter_async_context(replica(config(redis_url, emu)))
        async with replica(config(redis_url, emu)):
            await wait_for(lambda: all(requests(c, "getUpdates") for c in cores), message="polled")
            holders = {await redis.get(KEYS.webhook_lease(i)) for i in ids}
            assert len(holders) == 1 and None not in holders  # the first replica took all
            for core in cores:
                core.user_send(user_id=ALICE, text="one")
            await wait_for(
                lambda: _is(stored_by_bot(redis), dict.fromkeys(ids, 1)), message="one each"
            )
            await first.aclose()  # the holder stops: the standby takes every bot over
            for core in cores:
                core.user_send(user_id=ALICE, text="two")
            await wait_for(
                lambda: _is(stored_by_bot(redis), dict.fromkeys(ids, 2)),
                timeout=TTL_MS / 1000 + 5,
                message="two each, by the other replica",
            )
            assert {await redis.get(KEYS.webhook_lease(i)) for i in ids} != holders
        for core in cores:
            assert core.state.pending_count() == 0


# --- 401 ----------------------------------------------------------------------------------


async def test_a_401_on_one_bot_stops_only_its_owner_until_its_token_changes(
    redis: aioredis.Redis,
    redis_url: str,
    emu3: tuple[Emulator, EmulatorCore, EmulatorCore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B's token is revoked: one line naming B (never a token), B is asked nothing more;
    the default bot and C keep being polled. B's token rotated (`bots rotate-token`): B is
    polled again with the new token."""
    caplog.set_level(logging.INFO)
    emu, b_core, c_core = emu3
    b = spec("brand-b", TOKEN_B)
    await put(redis, b)
    await put(redis, spec("brand-c", TOKEN_C))
    async with replica(config(redis_url, emu)) as task:
        await wait_for(lambda: requests(b_core, "getUpdates") > 0, message="B polled")
        new_token = emu.rotate_token(b.bot_id)  # the old token answers 401 from now on
        await wait_for(lambda: "401 Unauthorized" in caplog.text, message="the line")
        asked = requests(b_core, "getUpdates")
        c_core.user_send(user_id=ALICE, text="C still served")
        emu.user_send(user_id=ALICE, text="the default bot too")
        want = {BOT_ID: 1, bot_id_of(TOKEN_C): 1}
        await wait_for(lambda: _is(stored_by_bot(redis), want), message="the others served")
        await asyncio.sleep(3 * TTL_MS / 5000)  # three ticks: B is not tried again
        assert requests(b_core, "getUpdates") == asked and not task.done()
        b_core.user_send(user_id=ALICE, text="after the rotation")
        rotated = BotSpec.from_record({**b.to_record(), "token": new_token}, "redis")
        await put(redis, rotated)
        want[b.bot_id] = 1
        await wait_for(lambda: _is(stored_by_bot(redis), want), message="B polled again")
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("gateway.")]
    lines = [line for line in ours if "401" in line]
    assert len(lines) == 1 and "'brand-b'" in lines[0] and "rotate-token" in lines[0]
    for token in (TOKEN, TOKEN_B, TOKEN_C, new_token):
        assert token.split(":", 1)[1] not in "\n".join(ours)


async def test_a_401_on_the_default_bot_among_others_does_not_stop_the_ingress(
    redis: aioredis.Redis, redis_url: str, emu3: tuple[Emulator, EmulatorCore, EmulatorCore]
) -> None:
    """With registry bots beside it the default bot's 401 is its own: the role runs on and
    the other bots keep being polled (alone, it stops the role: test_polling)."""
    emu, b_core, _ = emu3
    await put(redis, spec("brand-b", TOKEN_B))
    emu.faults.unauthorized()
    async with replica(config(redis_url, emu)) as task:
        b_core.user_send(user_id=ALICE, text="B served")
        await wait_for(
            lambda: _is(stored_by_bot(redis), {bot_id_of(TOKEN_B): 1}), message="B stored"
        )
        assert not task.done()


async def test_the_default_bot_alone_still_stops_the_role_on_401(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """A single-bot deployment keeps today's behaviour."""
    emu.faults.unauthorized()
    with pytest.raises(TelegramFatal) as info:
        async with replica(config(redis_url, emu)) as task:
            await asyncio.wait_for(task, 15)
    assert info.value.error_code == 401


# --- many bots ----------------------------------------------------------------------------


async def test_hundreds_of_bots_cost_one_timer_not_a_task_or_a_connection_each(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """300 registry bots whose leases another replica holds: this replica stands by for
    all of them with a handful of tasks and Redis connections, trying every lease once a
    tick in one pipeline (the take script runs ~300 times a tick, not more)."""
    bots = [spec(f"bot-{i}", f"{7000000000 + i}:{'t' * 30}") for i in range(300)]
    for at in range(0, len(bots), 100):
        async with redis.pipeline(transaction=False) as pipe:
            for bot in bots[at : at + 100]:
                pipe.hset(KEYS.bots, str(bot.bot_id), orjson.dumps(bot.to_record()))
                pipe.set(KEYS.webhook_lease(bot.bot_id), "another-replica", px=60_000)
            await pipe.execute()
    before = len(asyncio.all_tasks())

    async def evalsha_calls() -> int:
        return int((await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0))

    at_start = await evalsha_calls()
    async with replica(config(redis_url, emu)) as task:
        await wait_for(lambda: requests(emu, "getUpdates") > 0, message="the default bot polled")

        async def first_tick() -> bool:  # the registry's 300 bots loaded and tried once
            return await evalsha_calls() - at_start >= 301

        await wait_for(first_tick, timeout=30, message="a first tick over every bot")
        calls, started = await evalsha_calls(), time.monotonic()
        await asyncio.sleep(5 * TTL_MS / 5000)  # about five ticks
        stats = await redis.info("commandstats")
        ticks = (time.monotonic() - started) / (TTL_MS / 5000) + 2  # at most
        takes = stats["cmdstat_evalsha"]["calls"] - calls
        assert 301 <= takes <= 301 * ticks, (takes, ticks)  # one per bot (and the default)
        assert len(asyncio.all_tasks()) - before < 40  # no task per bot standing by
        clients = await redis.client_list()
        assert len(clients) < 20, len(clients)  # no connection per bot either
        assert not task.done()
    holders = await redis.mget([KEYS.webhook_lease(b.bot_id) for b in bots])
    assert set(holders) == {b"another-replica"}


async def test_many_leases_on_one_timer_on_a_redis_cluster(cluster_redis: aioredis.Redis) -> None:
    """``take_all`` on the cluster client: the leases live on every node, one call takes
    them all; another owner finds them held; released, they are the next owner's."""
    from gateway.runtime.batching import Coalescer
    from gateway.runtime.named_lease import NamedLease, Take, take_all

    keys = [KEYS.webhook_lease(7000000000 + i) for i in range(30)]
    slots = {cluster_redis.keyslot(k) for k in keys}  # type: ignore[attr-defined]
    assert len(slots) > 3  # spread over the nodes, not one slot
    calls = Coalescer(cluster_redis)
    a = [NamedLease(cluster_redis, k, "a", TTL_MS) for k in keys]
    b = [NamedLease(cluster_redis, k, "b", TTL_MS) for k in keys]
    assert await take_all(a, calls) == [Take.OURS] * 30
    assert await take_all(b, calls) == [Take.HELD] * 30 and not any(x.held for x in b)
    for lease in a:
        await lease.release()
    assert await take_all(b, calls) == [Take.OURS] * 30 and all(x.held for x in b)
    await calls.aclose()
