"""Running the worker and sender roles: resources opened in one stack, closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from typing import Any

# First: workers/__init__ imports aiogram with its models built on first use
# (workers/lazy_aiogram.py); an aiogram import ahead of it builds all ~450 at once
# (about 2 s of CPU and 90 MB per worker and sender process).
import workers  # noqa: F401

# isort: split
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.manager import RequestMiddlewareManager
from aiogram.client.telegram import TelegramAPIServer

from gateway.app.configs import consumer_config, worker_options
from gateway.app.receipts import receipt_consumers
from gateway.app.worker_bots import (
    PLACEHOLDER_TOKEN,
    BotsMe,
    aiogram_bot,
    worker_registry,
)
from gateway.core.bot_labels import settings_table
from gateway.core.errors import ConfigError
from gateway.core.metrics import ROLES, SENDER, WORKER, Metrics
from gateway.core.redact import redact_url
from gateway.core.settings import Config, PipelineSettings, TelegramSettings
from gateway.core.tasks import cancel_and_wait
from gateway.runtime.batching import Coalescer
from gateway.runtime.bots import registry_for
from gateway.runtime.consumer import StreamConsumer, consumer_name, run_until_stopped
from gateway.runtime.layout import ensure_layout_until
from gateway.runtime.metrics_export import Scrape, serve_metrics
from gateway.runtime.streams import connect_with
from workers.sender.bots import SenderBots
from workers.sender.handler import Sender
from workers.sender.limits import Limits
from workers.sender.observe import SenderMetrics
from workers.sender.parts import warm_up
from workers.worker.bots import Pipelines, WorkerBots
from workers.worker.breaker import CircuitBreaker
from workers.worker.commands import load_routers
from workers.worker.context import WorkerServices
from workers.worker.fsm import fsm_storage
from workers.worker.handler import UpdateHandler, build_dispatcher
from workers.worker.observe import WorkerMetrics
from workers.worker.pipeline import EmbeddedPipeline, HttpPipeline, Pipeline
from workers.worker.typing_indicator import stop_all

log = logging.getLogger(__name__)


def make_bot(tg: TelegramSettings, token: str | None = None) -> Bot:
    """An aiogram ``Bot`` on its own session (``TELEGRAM_API_URL``, the request timeout):
    ``token``'s, else ``TELEGRAM_BOT_TOKEN``'s."""
    if token is None:
        token = tg.token if tg.telegram_bot_token is not None else PLACEHOLDER_TOKEN
    return Bot(token, session=bot_session(tg))


_SESSIONS: dict[tuple[str, float], AiohttpSession] = {}


def session_template(tg: TelegramSettings) -> AiohttpSession:
    """This process's never-started session for ``tg``'s API URL and timeout."""
    key = (tg.telegram_api_url, tg.telegram_request_timeout)
    template = _SESSIONS.get(key)
    if template is None:
        api = TelegramAPIServer.from_base(tg.telegram_api_url)
        template = _SESSIONS[key] = AiohttpSession(api=api, timeout=tg.telegram_request_timeout)
    return template


def bot_session(tg: TelegramSettings) -> AiohttpSession:
    """A new aiogram session (its own connection pool) for one bot. aiogram's constructor
    loads certifi's CA bundle into a new TLS context each time: 40-45 ms of CPU on the
    event loop (measured), so a sender meeting a bot's first send stalled every lane of
    every bot that long, and their sends reached Telegram late (a 429 a second later). A
    shallow copy of one never-started session per process shares that context (read only:
    each session builds its own connector from it on first use)."""
    session = copy.copy(session_template(tg))
    session.middleware = RequestMiddlewareManager()  # never one bot's middlewares on another
    return session


def make_pipeline(ps: PipelineSettings) -> Pipeline:
    if ps.pipeline_url:
        ps.require_secret()
        return HttpPipeline(ps.pipeline_url, ps.pipeline_timeout, ps.pipeline_keys)
    # Imported here, as the ingress below: a worker with a real pipeline never loads them.
    from gateway.testkit.reference.rules import reply_body

    return EmbeddedPipeline(reply_body)


def process_metrics(cfg: Config, roles: frozenset[str], role: str) -> Metrics:
    """The metrics of a process hosting ``roles`` (off without a ``METRICS_TOKEN``), with
    the settings gauges that matter."""
    if cfg.metrics.token is None:
        return Metrics.off()
    m = Metrics(roles, role, bot_limit=cfg.metrics.metrics_bot_label_limit)
    m.bots.use(settings_table(cfg.telegram))  # until a role follows its registry
    m.child("tg_gateway_settings_partitions").set(cfg.keys.partitions)
    m.child("tg_gateway_settings_shutdown_grace_seconds").set(cfg.consumer.shutdown_grace_seconds)
    m.child("tg_gateway_settings_max_deliveries").set(cfg.consumer.max_deliveries)
    ss = cfg.sender
    for scope, limit in (
        ("global", ss.sender_global_per_second),
        ("chat", ss.sender_chat_per_second),
        ("group", ss.sender_group_per_minute / 60),
    ):
        m.child("tg_gateway_settings_rate_limit_per_second", scope).set(limit)
    return m


async def _listen(
    stack: contextlib.AsyncExitStack, cfg: Config, metrics: Metrics, redis: Any
) -> None:
    """The worker's or sender's own ``/metrics`` on ``METRICS_HOST:METRICS_PORT``."""
    ms = cfg.metrics
    if ms.token is None or not metrics.enabled:
        return
    scrape = Scrape(metrics, ms.token)
    scrape.watch(redis, cfg.keys)
    try:
        close = await serve_metrics(scrape, ms.metrics_host, ms.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"METRICS_PORT: cannot listen on {ms.metrics_host}:{ms.metrics_port} ({exc.strerror})"
        ) from None
    if close is not None:
        stack.push_async_callback(close)


async def serve_worker(cfg: Config, stop: asyncio.Event, metrics: Metrics | None = None) -> None:
    """Consume updates until ``stop``; in-flight work finishes within the grace period.
    ``metrics``: the process's, served by another role (``run``); else its own listener.
    Each update is handled as its bot (``UpdateEntry.bot_id``): the bots of the registry
    (``TELEGRAM_BOT_TOKEN``'s, ``BOTS_FILE``'s, Redis's), each with its pipeline."""
    ps, ws = cfg.pipeline, cfg.worker
    own = metrics is None
    m = process_metrics(cfg, WORKER, "worker") if metrics is None else metrics
    counts = WorkerMetrics(m)
    async with contextlib.AsyncExitStack() as stack:
        pipeline = make_pipeline(ps)
        stack.push_async_callback(pipeline.aclose)
        redis = connect_with(cfg.redis)
        stack.push_async_callback(redis.aclose)
        if own:
            await _listen(stack, cfg, m, redis)
        if await ensure_layout_until(redis, cfg.keys, "worker", stop) is None:
            return  # stopped while Redis was away
        registry = worker_registry(cfg, redis)
        await registry.load()  # a BOTS_FILE that cannot be used: one line, at start
        m.bots.follow(registry)  # the metrics' bot label: this registry's names
        session = AiohttpSession(
            api=TelegramAPIServer.from_base(cfg.telegram.telegram_api_url),
            timeout=cfg.telegram.telegram_request_timeout,
        )
        stack.push_async_callback(session.close)
        routers = load_routers(ws.worker_routers) + list(cfg.extra_routers)
        calls = Coalescer(redis)
        stack.push_async_callback(calls.aclose)
        options = worker_options(cfg)

        def breaker() -> CircuitBreaker:
            return CircuitBreaker(
                ps.pipeline_breaker_threshold,
                ps.pipeline_breaker_cooldown,
                on_open=counts.breaker_opened.inc,
            )

        services = WorkerServices(
            redis=redis,
            keys=cfg.keys,
            calls=calls,
            pipeline=pipeline,
            options=options,
            breaker=breaker(),
            metrics=counts,
        )
        pipelines = Pipelines(
            pipeline,
            services.breaker,
            lambda url: HttpPipeline(url, ps.pipeline_timeout, ps.pipeline_keys),
            breaker,
        )
        stack.push_async_callback(pipelines.aclose)
        counts.watch_breakers(pipelines.breakers)
        me = BotsMe(cfg.telegram, registry, stop)
        stack.push_async_callback(me.aclose)
        bots = WorkerBots(
            registry,
            pipelines,
            make_bot=lambda spec: aiogram_bot(spec, cfg.telegram, session),
            admin_ids=options.admin_ids,
            delivery_secret=options.delivery_secret,
            on_built=me.built,
            on_gone=me.gone,
        )
        bots.follow()
        refresh = asyncio.create_task(registry.run(stop), name="bot registry")
        stack.push_async_callback(cancel_and_wait, refresh)
        stack.push_async_callback(stop_all, services)  # typing indicators still running
        # Without routers of the user's, plain messages skip aiogram (UpdateHandler).
        storage = fsm_storage(
            redis, cfg.keys, ws.fsm_ttl_seconds, memory=cfg.fsm_storage == "memory"
        )
        dispatcher = build_dispatcher(routers, storage)
        handler = UpdateHandler(services, bots, dispatcher, direct=not routers)
        consumer = StreamConsumer(
            redis,
            cfg.keys,
            consumer_config(cfg, "worker"),
            handler,
            calls=calls,
            metrics=m,
        )
        log.info(
            "worker %s consuming %d partition(s) for %d bot(s); pipeline: %s",
            consumer.name,
            cfg.keys.partitions,
            len(registry.table),
            redact_url(ps.pipeline_url or "embedded reference pipeline"),
        )
        receipts = receipt_consumers(cfg, redis, calls, stack, m)
        grace = cfg.consumer.shutdown_grace_seconds
        await run_until_stopped([consumer, *receipts], stop, grace)
        if me.error is not None:
            raise me.error  # 401 from getMe of the only bot
        log.info(
            "worker stopped: %d acknowledged, %d dead-lettered; %s",
            consumer.handled,
            consumer.dead,
            services.counters,
        )


async def serve_sender(cfg: Config, stop: asyncio.Event, metrics: Metrics | None = None) -> None:
    """Drain the outbound streams until ``stop``. ``metrics``: as ``serve_worker``'s."""
    tg, ss = cfg.telegram, cfg.sender
    own = metrics is None
    m = process_metrics(cfg, SENDER, "sender") if metrics is None else metrics
    if not tg.telegram_enabled:
        async with contextlib.AsyncExitStack() as stack:
            redis = connect_with(cfg.redis)
            stack.push_async_callback(redis.aclose)
            if own:
                await _listen(stack, cfg, m, redis)
            await ensure_layout_until(redis, cfg.keys, "sender", stop)
            log.warning(
                "TELEGRAM_ENABLED=false: sender idle, outbound entries wait in their streams"
            )
            await stop.wait()
        return
    async with contextlib.AsyncExitStack() as stack:
        redis = connect_with(cfg.redis)
        stack.push_async_callback(redis.aclose)
        if own:
            await _listen(stack, cfg, m, redis)
        if await ensure_layout_until(redis, cfg.keys, "sender", stop) is None:
            return  # stopped while Redis was away
        # No first send leaves late for pydantic's first use of a model, or for the TLS
        # context of the first bot's session.
        warm_up()
        session_template(tg)
        limits = Limits(
            global_per_second=ss.sender_global_per_second,
            chat_per_second=ss.sender_chat_per_second,
            group_per_minute=ss.sender_group_per_minute,
            margin=ss.rate_margin,
        )
        # Every bot of the registry: its client, limiter and 401 state (workers/sender/bots).
        registry = registry_for(cfg, redis)
        await registry.load()  # a BOTS_FILE that cannot be used: one ConfigError line
        m.bots.follow(registry)  # the metrics' bot label: this registry's names
        bots = SenderBots(
            registry,
            redis,
            cfg.keys,
            lambda token: make_bot(tg, token),
            limits,
            paid_broadcast=ss.sender_paid_broadcast,
            assumed_senders=ss.sender_processes,
        )
        stack.push_async_callback(bots.aclose)
        refresh = asyncio.create_task(registry.run(stop), name="bot registry")
        stack.push_async_callback(cancel_and_wait, refresh)
        name = consumer_name("sender")
        sender = Sender(
            redis,
            cfg.keys,
            bots,
            max_attempts=ss.sender_max_attempts,
            default_ttl=ss.outbound_ttl_seconds,
            backoff_max=ss.sender_backoff_max,
            name=name,
            observe=SenderMetrics(m),
            edit_window=ss.sender_edit_window_seconds,
        )
        consumer = StreamConsumer(
            redis,
            cfg.keys,
            consumer_config(cfg, "sender"),
            sender,
            name=name,
            metrics=m,
        )
        leases = consumer.leases
        if leases is not None:  # the degraded limiters' share: the live senders last seen
            bots.senders = lambda: len(leases.members) or None
        log.info("sender %s draining %d partition(s)", consumer.name, cfg.keys.partitions)
        await run_until_stopped([consumer], stop, cfg.consumer.shutdown_grace_seconds)
        log.info(
            "sender stopped: %d acknowledged, %d dead-lettered, %d sent, %d flood waits",
            consumer.handled,
            consumer.dead,
            sender.sent,
            sender.flood_waits,
        )


async def serve_all(cfg: Config, stop: asyncio.Event) -> None:
    """Ingress, worker and sender in one process (small deployments, development)."""
    from gateway.ingress.serve import serve_ingress_role  # uvicorn: only this role needs it

    # One registry for the three: the union is served on the ingress's port.
    m = process_metrics(cfg, ROLES, "run")
    tasks = [
        asyncio.create_task(serve_ingress_role(cfg, stop, m), name="ingress"),
        asyncio.create_task(serve_worker(cfg, stop, m), name="worker"),
        asyncio.create_task(serve_sender(cfg, stop, m), name="sender"),
    ]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
