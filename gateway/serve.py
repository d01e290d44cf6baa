"""Running the ingress role: settings → ASGI app → uvicorn, with the poller or webhook setup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from gateway.contracts import Keys
from gateway.errors import TelegramFatal
from gateway.ingress import IngressApp, IngressConfig
from gateway.poller import UNAUTHORIZED_HELP, Poller, backoff
from gateway.redact import redact_url
from gateway.settings import (
    Config,
    IngressSettings,
    PipelineSettings,
    RedisSettings,
    TelegramSettings,
)
from gateway.streams import connect_with, ensure_groups
from gateway.telegram import BotApi, BotApiError

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: the role runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def build_ingress(
    tg: TelegramSettings,
    rs: RedisSettings,
    ps: PipelineSettings,
    ing: IngressSettings,
    outbound_ttl: float,
) -> IngressApp:
    keys = Keys(rs.stream_prefix, rs.partitions)
    config = IngressConfig(
        bot_id=tg.bot_id,
        keys=keys,
        webhook_secret=tg.webhook_secret,
        delivery_secret=(
            ps.delivery_secret.get_secret_value().encode() if ps.delivery_secret else None
        ),
        max_body_bytes=ing.max_body_bytes,
        reply_fields=ps.pipeline_reply_fields,
        outbound_ttl=outbound_ttl,
    )
    return IngressApp(
        config,
        lambda: connect_with(rs),
        rs.dedupe_ttl_seconds,
    )


async def _bootstrap_groups(app: IngressApp) -> None:
    attempt = 0
    while True:
        try:
            assert app.redis is not None
            await ensure_groups(app.redis, app.config.keys)
            return
        except Exception as exc:  # Redis down at start: keep serving 503s, keep trying
            delay = backoff(attempt, cap=5.0)
            attempt += 1
            log.warning("cannot create stream groups yet (%s); retry in %.1fs", exc, delay)
            await asyncio.sleep(delay)


async def ensure_webhook(api: BotApi, tg: TelegramSettings) -> None:
    """Point Telegram at our webhook (same settings as `tg-gateway webhook set`)."""
    assert tg.telegram_webhook_url is not None
    params: dict[str, object] = {
        "url": tg.telegram_webhook_url,
        "allowed_updates": tg.telegram_allowed_updates,
        "max_connections": tg.telegram_max_connections,
    }
    if tg.webhook_secret:
        params["secret_token"] = tg.webhook_secret
    await api.call("setWebhook", params)


async def serve_ingress(
    tg: TelegramSettings,
    rs: RedisSettings,
    ps: PipelineSettings,
    ing: IngressSettings,
    outbound_ttl: float,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop``; polls or sets the webhook when Telegram is enabled."""
    app = build_ingress(tg, rs, ps, ing, outbound_ttl)
    server = _Server(
        uvicorn.Config(
            app,
            host=ing.ingress_host,
            port=ing.ingress_port,
            lifespan="on",
            log_config=None,
            access_log=False,
            loop="none",
            http="httptools",
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
    background: list[asyncio.Task[None]] = []  # tasks whose end ends the role
    api: BotApi | None = None
    if tg.telegram_enabled:
        api = BotApi(tg.telegram_api_url, tg.token, tg.telegram_request_timeout)
        if tg.mode == "polling":
            assert app.publisher is not None
            poller = Poller(
                api,
                app.publisher,
                bot_id=tg.bot_id,
                allowed_updates=tg.telegram_allowed_updates,
                timeout=tg.telegram_poll_timeout,
            )
            background.append(asyncio.create_task(poller.run()))
            log.info("long polling %s", redact_url(tg.telegram_api_url))
        else:
            try:
                await ensure_webhook(api, tg)
                log.info("webhook set to %s", redact_url(tg.telegram_webhook_url or ""))
            except BotApiError as exc:
                if exc.error_code == 401:
                    raise TelegramFatal(UNAUTHORIZED_HELP, 401) from None
                log.error("setWebhook failed (%s); serving anyway", exc)
    if ready is not None:
        ready.set()
    stop_task = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait(
            [stop_task, serve_task, *background], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task is not stop_task and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in (bootstrap, *background):
            task.cancel()
        await asyncio.gather(bootstrap, *background, return_exceptions=True)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serve_task
        stop_task.cancel()
        if api is not None:
            await api.aclose()


async def serve_ingress_role(cfg: Config, stop: asyncio.Event) -> None:
    """The ingress role from the shared ``Config`` (no aiogram import: small and fast)."""
    await serve_ingress(
        cfg.telegram, cfg.redis, cfg.pipeline, cfg.ingress, cfg.sender.outbound_ttl_seconds, stop
    )
