"""Running the ingress role: settings → ASGI app → uvicorn, with each bot's webhook or poller."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from gateway.core.backoff import backoff
from gateway.core.bot_labels import settings_table
from gateway.core.bots import BotsSettings
from gateway.core.contracts import Keys
from gateway.core.errors import ConfigError
from gateway.core.files import FilesSettings
from gateway.core.metrics import INGRESS, Metrics
from gateway.core.receipt_settings import ReceiptSettings
from gateway.core.redact import redact_url
from gateway.core.settings import (
    Config,
    IngressSettings,
    MetricsSettings,
    PipelineSettings,
    RedisSettings,
    TelegramSettings,
)
from gateway.core.status_urls import StatusUrls
from gateway.ingress.app import IngressApp, IngressConfig
from gateway.ingress.config import bot_webhooks, files_config
from gateway.ingress.connections import bounded_protocol
from gateway.ingress.observe import IngressMetrics, WebhookCollector
from gateway.ingress.owners import BotOwners
from gateway.runtime.bots import BotRegistry, registry_of
from gateway.runtime.layout import ensure_layout
from gateway.runtime.metrics_export import Scrape
from gateway.runtime.streams import connect_with, ensure_groups
from gateway.telegram.client import webhook_secret_for

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: the role runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def ingress_config(
    tg: TelegramSettings,
    rs: RedisSettings,
    ps: PipelineSettings,
    ing: IngressSettings,
    outbound_ttl: float,
    files: FilesSettings | None = None,
    receipts: ReceiptSettings | None = None,
    bots: BotsSettings | None = None,
) -> IngressConfig:
    """What the ingress app reads from the settings (``receipts`` None: a per-reply
    ``status_url`` is refused; ``bots`` None: the registry's bots are polled)."""
    return IngressConfig(
        bot_id=tg.bot_id,
        keys=rs.keys,
        # Polling mode serves no webhook route; webhook mode always checks a secret.
        webhook_secret=webhook_secret_for(tg) if tg.mode == "webhook" else None,
        delivery_secret=(
            ps.delivery_secret.get_secret_value().encode() if ps.delivery_secret else None
        ),
        max_body_bytes=ing.max_body_bytes,
        reply_fields=tuple(ps.pipeline_reply_fields),
        outbound_ttl=outbound_ttl,
        body_timeout=ing.ingress_body_timeout,
        store_timeout=ing.ingress_store_timeout,
        callback_keys=ps.callback_keys,
        files=files_config(tg, files),
        status_urls=receipts.status_urls if receipts is not None else StatusUrls(),
        bot_webhooks=bots is not None and bot_webhooks(tg, bots),
        openapi=ing.openapi_enabled,
    )


def build_ingress(
    tg: TelegramSettings,
    rs: RedisSettings,
    ps: PipelineSettings,
    ing: IngressSettings,
    outbound_ttl: float,
    observe: IngressMetrics | None = None,
    files: FilesSettings | None = None,
    receipts: ReceiptSettings | None = None,
    bots: BotsSettings | None = None,
    registry: BotRegistry | None = None,
) -> IngressApp:
    return IngressApp(
        ingress_config(tg, rs, ps, ing, outbound_ttl, files, receipts, bots),
        lambda: connect_with(rs),
        rs.dedupe_ttl_seconds,
        observe=observe,
        bots=registry,
    )


def ingress_metrics(
    ms: MetricsSettings,
    rs: RedisSettings,
    metrics: Metrics | None = None,
    tg: TelegramSettings | None = None,
) -> IngressMetrics:
    """The ingress's metrics (``metrics``: the process's, shared with the other roles it
    hosts), served on its port's ``/metrics``; off without a ``METRICS_TOKEN``. ``tg``:
    its bot labels the metrics until the ingress follows its registry."""
    token = ms.token
    if token is None:
        return IngressMetrics.off()
    if metrics is None:
        metrics = Metrics(INGRESS, "ingress", bot_limit=ms.metrics_bot_label_limit)
        if tg is not None:
            metrics.bots.use(settings_table(tg))
    metrics.child("tg_gateway_settings_partitions").set(rs.partitions)
    return IngressMetrics(metrics, Scrape(metrics, token))


async def _check_layout_first(rs: RedisSettings, keys: Keys) -> None:
    """Compare the stream layout before serving (``LayoutMismatch``: the role stops with
    one line). Redis away or hung: serve anyway, ``_bootstrap_groups`` checks it later."""
    redis = connect_with(rs)
    try:
        await asyncio.wait_for(ensure_layout(redis, keys, "ingress"), timeout=3.0)
    except ConfigError:
        raise
    except Exception as exc:
        log.warning("cannot check the stream layout yet (%s); serving 503s meanwhile", exc)
    finally:
        with contextlib.suppress(Exception):
            await redis.aclose()


async def _bootstrap_groups(app: IngressApp) -> None:
    """Layout check, then streams and groups; retried while Redis is away. A layout
    mismatch ends the role (``serve_ingress`` waits on this task too)."""
    attempt = 0
    while True:
        try:
            assert app.redis is not None
            await ensure_layout(app.redis, app.config.keys, "ingress")
            await ensure_groups(app.redis, app.config.keys)
            return
        except ConfigError:
            raise
        except Exception as exc:  # Redis down at start: keep serving 503s, keep trying
            delay = backoff(attempt, cap=5.0)
            attempt += 1
            log.warning("cannot create stream groups yet (%s); retry in %.1fs", exc, delay)
            await asyncio.sleep(delay)


async def serve_ingress(
    tg: TelegramSettings,
    rs: RedisSettings,
    ps: PipelineSettings,
    ing: IngressSettings,
    outbound_ttl: float,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    observe: IngressMetrics | None = None,
    files: FilesSettings | None = None,
    receipts: ReceiptSettings | None = None,
    bots: BotsSettings | None = None,
) -> None:
    """Serve until ``stop``; each bot's webhook is set, or it is polled, by the replica
    holding its lease when Telegram is enabled (``owners.BotOwners``)."""
    observe = observe or IngressMetrics.off()
    bs = bots or BotsSettings()
    registry_redis = connect_with(rs)
    try:
        registry = registry_of(tg, bs, registry_redis, rs.keys)
        observe.metrics.bots.follow(registry)  # the metrics' bot label: its names
        app = build_ingress(tg, rs, ps, ing, outbound_ttl, observe, files, receipts, bs, registry)
        # A BOTS_FILE that cannot be used or a layout mismatch: one line, exit 2.
        for outcome in await asyncio.gather(
            registry.load(), _check_layout_first(rs, app.config.keys), return_exceptions=True
        ):
            if isinstance(outcome, BaseException):
                raise outcome
        await _serve(app, registry, tg, bs, rs, ing, stop, ready, observe)
    finally:
        with contextlib.suppress(Exception):
            await registry_redis.aclose()


async def _serve(
    app: IngressApp,
    registry: BotRegistry,
    tg: TelegramSettings,
    bs: BotsSettings,
    rs: RedisSettings,
    ing: IngressSettings,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
    observe: IngressMetrics,
) -> None:
    server = _Server(
        uvicorn.Config(
            app,
            host=ing.ingress_host,
            port=ing.ingress_port,
            lifespan="on",
            log_config=None,
            access_log=False,
            loop="none",
            http=bounded_protocol(ing, observe),
            timeout_keep_alive=ing.ingress_keep_alive,
            # uvicorn answers 503 once this many requests are in flight (a request's task
            # may outlive its connection); +1: its check counts the asking connection too,
            # and BoundedHttpTools already keeps connections at the limit.
            limit_concurrency=ing.ingress_max_connections + 1,
            timeout_graceful_shutdown=10,
        )
    )
    serve_task = asyncio.create_task(server.serve())
    while not server.started:
        if serve_task.done():
            await serve_task
            raise RuntimeError(f"ingress could not bind {ing.ingress_host}:{ing.ingress_port}")
        await asyncio.sleep(0.02)
    log.info("ingress listening on %s:%s", ing.ingress_host, ing.ingress_port)
    bootstrap = asyncio.create_task(_bootstrap_groups(app))
    refreshing = asyncio.create_task(registry.run(stop))  # its end ends nothing
    background: list[asyncio.Task[None]] = []  # tasks whose end ends the role
    if tg.telegram_enabled:
        assert app.redis is not None and app.publisher is not None
        # One replica of many polls or owns each bot's webhook: the holder of its lease.
        owners = BotOwners(
            registry, tg, bs, app.publisher, app.redis, app.config.keys, rs.lease_ttl_ms, observe
        )
        if tg.mode == "webhook":  # the default bot's webhook: Telegram's view, from its watchdog
            default_id = tg.bot_id
            observe.metrics.register(WebhookCollector(lambda: owners.webhook_state(default_id)))
        owning = asyncio.create_task(owners.run(stop))
        background.append(owning)
        if tg.mode == "polling":
            log.info("long polling %s by the lease holder", redact_url(tg.telegram_api_url))
        # Ready once the first take is answered and, for each bot it gave this replica,
        # the webhook registered or polling begun (bounded: the take's two intervals,
        # getWebhookInfo and setWebhook).
        settled = asyncio.create_task(owners.settled.wait())
        bound = 2 * owners.interval + 2 * tg.telegram_request_timeout + 1
        await asyncio.wait({owning, settled}, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
        settled.cancel()
    # A fatal answer at the first step: not ready; the loop below raises it, cleaning up.
    if ready is not None and not any(task.done() for task in background):
        ready.set()
    stop_task = asyncio.create_task(stop.wait())
    try:
        waiting = {stop_task, serve_task, bootstrap, *background}
        while True:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if done != {bootstrap} or bootstrap.exception() is not None:
                break  # the bootstrap succeeding alone ends nothing
        for task in done:
            if task is not stop_task and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in (bootstrap, refreshing, *background):
            task.cancel()
        await asyncio.gather(bootstrap, refreshing, *background, return_exceptions=True)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serve_task
        stop_task.cancel()


async def serve_ingress_role(
    cfg: Config, stop: asyncio.Event, metrics: Metrics | None = None
) -> None:
    """The ingress role from the shared ``Config`` (no aiogram import: small and fast).
    ``metrics``: the process's, when it hosts other roles too (``tg-gateway run``)."""
    await serve_ingress(
        cfg.telegram,
        cfg.redis,
        cfg.pipeline,
        cfg.ingress,
        cfg.sender.outbound_ttl_seconds,
        stop,
        observe=ingress_metrics(cfg.metrics, cfg.redis, metrics, cfg.telegram),
        files=cfg.files,
        receipts=cfg.receipts,
        bots=cfg.bots,
    )
