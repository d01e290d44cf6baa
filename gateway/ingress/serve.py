"""Running the ingress role: settings → ASGI app → uvicorn, with the poller or webhook setup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.core.backoff import backoff
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
from gateway.ingress.config import files_config
from gateway.ingress.observe import IngressMetrics, WebhookCollector
from gateway.ingress.owner import UpdatesOwner
from gateway.runtime.layout import ensure_layout
from gateway.runtime.metrics_export import Scrape
from gateway.runtime.streams import connect_with, ensure_groups
from gateway.telegram.client import BotApi, webhook_secret_for

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
) -> IngressConfig:
    """What the ingress app reads from the settings (``receipts`` None: a per-reply
    ``status_url`` is refused)."""
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
) -> IngressApp:
    return IngressApp(
        ingress_config(tg, rs, ps, ing, outbound_ttl, files, receipts),
        lambda: connect_with(rs),
        rs.dedupe_ttl_seconds,
        observe=observe,
    )


def ingress_metrics(
    ms: MetricsSettings, rs: RedisSettings, metrics: Metrics | None = None
) -> IngressMetrics:
    """The ingress's metrics (``metrics``: the process's, shared with the other roles it
    hosts), served on its port's ``/metrics``; off without a ``METRICS_TOKEN``."""
    token = ms.token
    if token is None:
        return IngressMetrics.off()
    metrics = metrics or Metrics(INGRESS, "ingress")
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
) -> None:
    """Serve until ``stop``; polls or sets the webhook when Telegram is enabled."""
    observe = observe or IngressMetrics.off()
    app = build_ingress(tg, rs, ps, ing, outbound_ttl, observe, files, receipts)
    await _check_layout_first(rs, app.config.keys)
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
    background: list[asyncio.Task[None]] = []  # tasks whose end ends the role
    api: BotApi | None = None
    if tg.telegram_enabled:
        api = BotApi(tg.telegram_api_url, tg.token, tg.telegram_request_timeout)
        assert app.redis is not None and app.publisher is not None
        # One replica of many polls or owns the webhook: the holder of the bot's lease.
        owner = UpdatesOwner(
            api, tg, app.publisher, app.redis, app.config.keys, rs.lease_ttl_ms, observe
        )
        if owner.watch is not None:  # webhook mode: Telegram's view, from the watchdog
            watch = owner.watch
            observe.metrics.register(WebhookCollector(lambda: watch.state))
        owning = asyncio.create_task(owner.run(stop))
        background.append(owning)
        if tg.mode == "polling":
            log.info("long polling %s by the lease holder", redact_url(tg.telegram_api_url))
        # Ready once the first take is answered and, if it is ours, the webhook registered
        # (bounded: the take's two intervals, getWebhookInfo and setWebhook).
        settled = asyncio.create_task(owner.settled.wait())
        bound = 2 * owner.lease.interval + 2 * tg.telegram_request_timeout + 1
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
        for task in (bootstrap, *background):
            task.cancel()
        await asyncio.gather(bootstrap, *background, return_exceptions=True)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serve_task
        stop_task.cancel()
        if api is not None:
            await api.aclose()


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
        observe=ingress_metrics(cfg.metrics, cfg.redis, metrics),
        files=cfg.files,
        receipts=cfg.receipts,
    )


MAX_HEADER_BYTES = 64 * 1024


def _plain(status: bytes, text: bytes) -> bytes:
    """A complete ``connection: close`` answer, written before the ASGI app is involved."""
    head = b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
    return head + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(text) + text


_408 = _plain(b"408 Request Timeout", b"request not received in time")
_431 = _plain(b"431 Request Header Fields Too Large", b"request headers too large")
_503 = _plain(b"503 Service Unavailable", b"too many connections")


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds it lacks for slow clients.

    uvicorn arms its keep-alive timer only after a response, so a fresh connection that
    sends nothing, or one header line now and then, stays open forever, and it accepts
    every connection. Here:

    - at most ``max_connections`` are open: the next one gets 503 and is closed;
    - a request's headers must be complete within ``header_timeout`` of the connection
      opening (first request) or of its first byte (later ones), and at most
      ``MAX_HEADER_BYTES`` long (431);
    - its body must be complete within ``body_timeout`` (+1 s: the app's own deadline in
      ``IngressApp._read_body`` answers a JSON 408 first; this one also covers bodies the
      app never reads, e.g. after a 401).

    Past a deadline: 408 (if no response started) and the connection is closed.
    """

    max_connections = 1000
    header_timeout = 10.0
    body_timeout = 10.0
    observe = IngressMetrics.off()
    _refused_logged_at = -1e9  # a flood of refusals logs a line per 10 s, not per refusal

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._fresh = True  # no request headers seen yet on this connection
        self._in_headers = False
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self.transport = transport
            transport.write(_503)
            transport.close()
            self.observe.rejected("connection", "overloaded")
            now = time.monotonic()
            if now - BoundedHttpTools._refused_logged_at > 10:
                BoundedHttpTools._refused_logged_at = now
                log.warning(
                    "refusing connections: %d open (INGRESS_MAX_CONNECTIONS)",
                    len(self.connections),
                )
            return
        super().connection_made(transport)
        self._in_headers = True
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.parser is None or self.flow is None:  # refused in connection_made
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.flow is None:  # refused
            return
        super().data_received(data)
        if self._in_headers and self.parser is not None:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._end(_431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        if not self._fresh:  # a fresh connection's deadline runs from connect
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._fresh = self._in_headers = False
        self._arm(self.body_timeout + 1.0)
        limit = self.limit_concurrency  # uvicorn's own check, made just after this one
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.observe.rejected("connection", "overloaded")  # uvicorn answers the 503
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        if self.cycle is not None and self.cycle.response_complete:
            # Answered before the body was in (e.g. a 401): uvicorn's keep-alive timer was
            # armed at the answer and dropped by the body's bytes; idle from now on.
            self._arm(float(self.timeout_keep_alive))
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self._end(_408)

    def _end(self, answer: bytes) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or (self.cycle.response_complete and self._in_headers):
            self.transport.write(answer)  # a new request, and nothing else being written
        self.transport.close()


def bounded_protocol(
    ing: IngressSettings, observe: IngressMetrics | None = None
) -> type[BoundedHttpTools]:
    """The protocol class uvicorn builds per connection, with this ingress's bounds."""
    return type(
        "BoundedHttpTools",
        (BoundedHttpTools,),
        {
            "max_connections": ing.ingress_max_connections,
            "header_timeout": ing.ingress_header_timeout,
            "body_timeout": ing.ingress_body_timeout,
            "observe": observe or IngressMetrics.off(),
        },
    )
