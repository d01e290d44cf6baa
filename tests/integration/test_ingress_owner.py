"""Several ingress replicas, one holder of the bot's lease: it alone registers the webhook
(and keeps it so) or polls; the others stand by and take over (real Redis, the emulator)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.errors import TelegramFatal
from gateway.core.settings import MetricsSettings, load
from gateway.ingress.observe import IngressMetrics
from gateway.ingress.serve import ingress_metrics, serve_ingress
from gateway.runtime.named_lease import NamedLease
from gateway.telegram.client import BotApi, derive_webhook_secret
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, TOKEN, free_port, make_config, wait_for

pytestmark = pytest.mark.integration

ALICE = 6123456789
TTL_MS = 1000
CHECK = 0.3
LEASE = f"tg:lease:webhook:{BOT_ID}"


@contextlib.asynccontextmanager
async def replica(
    cfg: Any, observe: IngressMetrics | None = None
) -> AsyncIterator[tuple[asyncio.Task[None], asyncio.Event]]:
    """One ingress replica, ready; stopped gracefully (SIGTERM's path) on exit."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve_ingress(
            cfg.telegram, cfg.redis, cfg.pipeline, cfg.ingress, 60.0, stop, ready, observe
        )
    )
    try:
        await asyncio.wait({task, asyncio.create_task(ready.wait())}, timeout=15,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if task.done():
            await task
        yield task, stop
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


def webhook_cfg(redis_url: str, emu: Emulator, url: str, **telegram: Any) -> Any:
    return make_config(
        redis_url,
        emu.api_url,
        telegram={
            "telegram_mode": "webhook",
            "telegram_webhook_url": url,
            "webhook_check_seconds": CHECK,
            **telegram,
        },
        redis={"lease_ttl_ms": TTL_MS},
    )


def polling_cfg(redis_url: str, emu: Emulator) -> Any:
    return make_config(redis_url, emu.api_url, redis={"lease_ttl_ms": TTL_MS})


def requests(emu: Emulator, method: str) -> int:
    return int(emu.stats()["requests"].get(method, 0))


async def stored_ids(redis: aioredis.Redis, cfg: Any) -> list[int]:
    import orjson

    ids = []
    for stream in cfg.keys.all_updates():
        ids += [orjson.loads(f[b"update"])["update_id"] for _, f in await redis.xrange(stream)]
    return ids


async def bot_call(emu: Emulator, method: str, **params: Any) -> Any:
    async with BotApi(emu.api_url, TOKEN) as api:
        return await api.call(method, params)


# --- webhook mode -------------------------------------------------------------------------


async def test_two_webhook_replicas_register_once_and_the_holder_keeps_watching(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """Started at once, one replica takes the lease and calls setWebhook; the other does
    not, ever; the holder asks getWebhookInfo every check; updates flow."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhook/telegram"
    a = webhook_cfg(redis_url, emu, url)
    a.ingress = a.ingress.model_copy(update={"ingress_port": port})
    b = webhook_cfg(redis_url, emu, url)
    async with contextlib.AsyncExitStack() as first, contextlib.AsyncExitStack() as second:
        await asyncio.gather(  # starting at once: they race for the lease
            first.enter_async_context(replica(a)), second.enter_async_context(replica(b))
        )
        assert emu.state.webhook is not None and emu.state.webhook.url == url
        assert emu.state.webhook.secret_token == derive_webhook_secret(TOKEN)
        checks = requests(emu, "getWebhookInfo")
        await wait_for(lambda: requests(emu, "getWebhookInfo") >= checks + 3, message="checks")
        emu.user_send(user_id=ALICE, text="by webhook")
        await wait_for(lambda: stored_ids(redis, a), message="the update stored")
        assert requests(emu, "setWebhook") == 1


async def test_drift_is_reapplied_within_one_check_and_a_standby_takes_over(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """Someone points the webhook elsewhere: the holder sets it back within a check. The
    holder stopping (lease released), the standby registers it once and watches on."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhook/telegram"
    a = webhook_cfg(redis_url, emu, url)
    a.ingress = a.ingress.model_copy(update={"ingress_port": port})
    b = webhook_cfg(redis_url, emu, url)
    metrics_token = "metrics-token-0123456789"
    observe = ingress_metrics(load(MetricsSettings, metrics_token=metrics_token), a.redis)
    async with contextlib.AsyncExitStack() as first, contextlib.AsyncExitStack() as second:
        await first.enter_async_context(replica(a, observe))  # a holds: it started alone
        await second.enter_async_context(replica(b))
        assert requests(emu, "setWebhook") == 1
        await bot_call(emu, "setWebhook", url="http://127.0.0.1:9/elsewhere")
        drifted_at = time.monotonic()
        await wait_for(
            lambda: emu.state.webhook is not None and emu.state.webhook.url == url,
            timeout=2 * CHECK + 2,
            message="the webhook set back",
        )
        assert time.monotonic() - drifted_at < CHECK + 1.5
        assert requests(emu, "setWebhook") == 3  # a's, the drift, a's re-application
        async with httpx.AsyncClient(timeout=5) as http:  # the holder's metrics say so
            scraped = await http.get(
                f"http://127.0.0.1:{port}/metrics",
                headers={"Authorization": f"Bearer {metrics_token}"},
            )
        assert 'tg_gateway_telegram_webhook_reapplied_total{field="url"} 1.0' in scraped.text
        assert "tg_gateway_telegram_webhook_pending_updates 0.0" in scraped.text
        await first.aclose()  # a stops (SIGTERM's path): b takes the lease, registers once
        await wait_for(
            lambda: requests(emu, "setWebhook") == 4,
            timeout=TTL_MS / 5000 + 3,
            message="the standby's registration",
        )
        await bot_call(emu, "deleteWebhook")
        await wait_for(
            lambda: emu.state.webhook is not None and emu.state.webhook.url == url,
            timeout=2 * CHECK + 2,
            message="b watching: the deleted webhook set again",
        )
        assert requests(emu, "setWebhook") == 5


async def test_a_drifted_secret_shows_as_401s_and_is_reapplied(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram never shows the secret: one set behind our back makes our webhook answer
    401; the watchdog sees that error in getWebhookInfo, sets the webhook again, and the
    update Telegram held is delivered. No log line carries the secret or the token."""
    caplog.set_level(logging.INFO)
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhook/telegram"
    cfg = webhook_cfg(redis_url, emu, url)
    cfg.ingress = cfg.ingress.model_copy(update={"ingress_port": port})
    async with replica(cfg):
        await bot_call(
            emu,
            "setWebhook",
            url=url,
            secret_token="an_old_secret",
            allowed_updates=cfg.telegram.telegram_allowed_updates,
            max_connections=cfg.telegram.telegram_max_connections,
        )
        emu.user_send(user_id=ALICE, text="held by a wrong secret")
        await wait_for(lambda: stored_ids(redis, cfg), timeout=10, message="delivered after all")
        assert emu.state.webhook is not None
        assert emu.state.webhook.secret_token == derive_webhook_secret(TOKEN)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway."))
    assert "webhook drifted from the settings (secret)" in ours
    for secret in (derive_webhook_secret(TOKEN), TOKEN, "an_old_secret"):
        assert secret not in ours


# --- polling mode -------------------------------------------------------------------------


@pytest.fixture
def poll_spans(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float, float]]:
    """Every getUpdates call: (which BotApi, start, end), on the caller's clock.

    Each BotApi is kept alive here: a replica builds its client when it takes the lease,
    so the standby's could otherwise reuse the stopped holder's freed address, and two
    replicas would count as one (``id()`` is unique only among live objects)."""
    spans: list[tuple[int, float, float]] = []
    alive: dict[int, BotApi] = {}
    real = BotApi.get_updates_raw

    async def recorded(self: BotApi, *args: Any, **kwargs: Any) -> Any:
        alive.setdefault(id(self), self)
        start = time.monotonic()
        try:
            return await real(self, *args, **kwargs)
        finally:
            spans.append((id(self), start, time.monotonic()))

    monkeypatch.setattr(BotApi, "get_updates_raw", recorded)
    return spans


def assert_one_poller_at_a_time(spans: list[tuple[int, float, float]]) -> None:
    for who, start, end in spans:
        for other, start2, end2 in spans:
            assert who == other or end <= start2 or end2 <= start, "two replicas polled at once"
    assert len({who for who, _, _ in spans}) >= 2, "no take-over happened"


async def test_one_poller_at_a_time_and_nothing_lost_or_doubled_across_a_stop(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, poll_spans: list[Any]
) -> None:
    a, b = polling_cfg(redis_url, emu), polling_cfg(redis_url, emu)
    sent: list[int] = []
    async with contextlib.AsyncExitStack() as first, contextlib.AsyncExitStack() as second:
        await first.enter_async_context(replica(a))  # a holds: it started alone
        await wait_for(lambda: requests(emu, "getUpdates") >= 1, message="a polling")
        await second.enter_async_context(replica(b))
        for i in range(10):
            sent.append(emu.user_send(user_id=ALICE + i % 3, text=f"m{i}")["update_id"])
        await wait_for(lambda: _count_is(redis, a, 10), message="10 stored")
        await first.aclose()  # a stops (SIGTERM's path): its lease is released
        for i in range(10, 20):  # while b takes over
            sent.append(emu.user_send(user_id=ALICE + i % 3, text=f"m{i}")["update_id"])
            await asyncio.sleep(0.05)
        await wait_for(lambda: _count_is(redis, a, 20), timeout=15, message="20 stored")
        await wait_for(lambda: emu.state.pending_count() == 0, message="all confirmed")
    ids = await stored_ids(redis, a)
    assert sorted(ids) == sorted(sent)  # none lost, none doubled
    assert_one_poller_at_a_time(poll_spans)


async def test_a_killed_holder_is_replaced_within_the_lease_ttl(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    poll_spans: list[Any],
) -> None:
    """kill -9: the holder vanishes without releasing the lease; the standby polls once
    the lease expires, and what was sent meanwhile arrives once."""
    a, b = polling_cfg(redis_url, emu), polling_cfg(redis_url, emu)
    first = [emu.user_send(user_id=ALICE, text="before")["update_id"]]
    async with replica(a) as (holder, _):
        await wait_for(lambda: _count_is(redis, a, 1), message="stored by the first replica")
        async with replica(b):
            with pytest.MonkeyPatch.context() as kill:
                kill.setattr(NamedLease, "release", _no_release)  # as kill -9: no release
                holder.cancel()
                killed_at = time.monotonic()
                with contextlib.suppress(asyncio.CancelledError):
                    await holder
            assert await redis.exists(LEASE)
            later = [emu.user_send(user_id=ALICE, text=f"after {i}")["update_id"] for i in range(3)]
            await wait_for(lambda: _count_is(redis, a, 4), timeout=10, message="stored by b")
            assert time.monotonic() - killed_at < TTL_MS / 1000 + 2.0
    assert sorted(await stored_ids(redis, a)) == sorted(first + later)
    assert_one_poller_at_a_time(poll_spans)


async def _no_release(self: NamedLease) -> None:
    return None


async def _count_is(redis: aioredis.Redis, cfg: Any, n: int) -> bool:
    return len(await stored_ids(redis, cfg)) >= n


# --- a hostile lease key ------------------------------------------------------------------


async def test_a_lease_key_of_another_type_is_a_clear_line_not_a_crash(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a string: nobody polls (the key is left alone), the ingress serves on and says
    what to do; once the key is deleted a replica takes the lease and polls."""
    await redis.hset(LEASE, "who", "me")
    cfg = polling_cfg(redis_url, emu)
    async with replica(cfg) as (task, _):
        await wait_for(lambda: "is not a string (not a lease)" in caplog.text, message="the line")
        await asyncio.sleep(3 * TTL_MS / 5000)
        assert requests(emu, "getUpdates") == 0 and not task.done()
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{cfg.ingress.ingress_port}/healthz")
            assert health.status_code == 200
        await redis.delete(LEASE)
        await wait_for(lambda: requests(emu, "getUpdates") >= 1, message="polling once deleted")
    assert caplog.text.count("is not a string") == 1  # said once, not per try


async def test_a_lease_value_without_expiry_expires_and_is_taken(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A string nobody's lease wrote (no expiry) is given one: taken within about a ttl."""
    await redis.set(LEASE, b"\x00garbage\xff" * 20)
    cfg = polling_cfg(redis_url, emu)
    async with replica(cfg):
        await wait_for(lambda: "holds a value without expiry" in caplog.text, message="the line")
        await wait_for(
            lambda: requests(emu, "getUpdates") >= 1,
            timeout=TTL_MS / 1000 + 3,
            message="polling after the garbage expired",
        )
        emu.user_send(user_id=ALICE, text="after garbage")
        await wait_for(lambda: _count_is(redis, cfg, 1), message="stored")


# --- a poller outside the lease ------------------------------------------------------------


async def test_a_poller_outside_the_lease_is_tolerated_briefly_then_fatal_as_before(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """One stray getUpdates (a holder that has not heard it lost the lease) costs the
    holder a 409 and a new poll, not the role; one that keeps polling stops the role with
    the 409 it always did (another deployment on this token)."""
    cfg = polling_cfg(redis_url, emu)

    async def stray_then_foreign() -> None:
        async with replica(cfg) as (task, _):
            await wait_for(lambda: requests(emu, "getUpdates") >= 1, message="polling")
            await asyncio.sleep(0.2)
            await bot_call(emu, "getUpdates", timeout=0)
            await wait_for(lambda: "polling again" in caplog.text, message="tolerated")
            assert not task.done()
            emu.user_send(user_id=ALICE, text="still polled")
            await wait_for(lambda: _count_is(redis, cfg, 1), message="stored after the 409")
            deadline = time.monotonic() + 15
            while not task.done() and time.monotonic() < deadline:  # a foreign poller
                with contextlib.suppress(Exception):
                    await bot_call(emu, "getUpdates", timeout=1)
            assert task.done()

    with pytest.raises(TelegramFatal, match="terminated by other getUpdates") as info:
        await stray_then_foreign()
    assert info.value.error_code == 409


async def test_the_lease_on_a_redis_cluster(cluster_redis: aioredis.Redis) -> None:
    """The same script on a cluster client: one holder, released to the next."""
    from gateway.runtime.named_lease import Take

    a = NamedLease(cluster_redis, LEASE, "a", TTL_MS)
    b = NamedLease(cluster_redis, LEASE, "b", TTL_MS)
    assert await a.take() is Take.OURS and await a.take() is Take.OURS
    assert await b.take() is Take.HELD and not b.held
    await a.release()
    assert await b.take() is Take.OURS and b.held
