"""The ingress's metrics: what its endpoints count, the request timer and ``/metrics``.

``IngressMetrics.off()`` (no ``METRICS_TOKEN``) counts nothing, times nothing and serves
no ``/metrics`` (404): the webhook's path is then what it was without metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from time import perf_counter
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.core.bot_labels import PerBot
from gateway.core.metrics import Metrics, status_class
from gateway.ingress.webhook import WebhookState
from gateway.runtime.metrics_export import Scrape

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Route = Callable[[Scope, Receive, Send], Awaitable[None]]

ENDPOINTS = ("webhook", "delivery", "files", "healthz", "readyz", "metrics", "other")
STATUSES = ("2xx", "4xx", "5xx")


class BotUpdates:
    """One bot's ``tg_gateway_ingress_updates_total`` children, by (source, outcome)."""

    def __init__(self, metrics: Metrics, bot: str) -> None:
        self.updates = {
            (source, outcome): metrics.child(
                "tg_gateway_ingress_updates_total", source, outcome, bot
            )
            for source in ("webhook", "polling")
            for outcome in ("accepted", "duplicate", "rejected")
        }


class IngressMetrics:
    """Pre-bound children of the ingress's metrics, and its ``/metrics`` scrape.
    ``for_bot(bot_id)``: the children of one bot's updates (None: no bot known yet)."""

    def __init__(self, metrics: Metrics, scrape: Scrape | None) -> None:
        self.metrics = metrics
        self.scrape = scrape  # None: no /metrics route
        self.on = scrape is not None and metrics.enabled
        m = metrics
        self.for_bot: Callable[[int | None], BotUpdates] = PerBot(
            m.bots, lambda bot: BotUpdates(m, bot)
        )
        if not m.enabled:
            off = BotUpdates(m, "none")
            self.for_bot = lambda _bot_id: off
        self.callbacks = {
            o: m.child("tg_gateway_ingress_callbacks_total", o) for o in ("stored", "rejected")
        }
        self.durations = {
            (e, s): m.child("tg_gateway_ingress_request_duration_seconds", e, s)
            for e in ENDPOINTS
            for s in STATUSES
        }
        self._timers: dict[str, dict[int, Any]] = {e: {} for e in ENDPOINTS}

    @classmethod
    def off(cls) -> IngressMetrics:
        return cls(Metrics.off(), None)

    def rejected(self, endpoint: str, reason: str, bot_id: int | None = None) -> None:
        """A refused request: by reason, and as the webhook's or the callbacks' outcome
        (a webhook's: of ``bot_id``, the bot its path named; None: no bot known)."""
        self.metrics.child("tg_gateway_ingress_rejected_total", endpoint, reason).inc()
        if endpoint == "webhook":
            self.for_bot(bot_id).updates["webhook", "rejected"].inc()
        elif endpoint == "delivery":
            self.callbacks["rejected"].inc()

    async def timed(
        self, route: Route, endpoint: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run ``route``, observing its duration by endpoint and status class.

        On the hot path of every request: ``sending`` is a plain function handing back
        ``send``'s awaitable (no coroutine of its own per message), and the histogram
        child comes from a per-endpoint dict keyed by the status code."""
        started = perf_counter()
        status = 500  # an answer never started: the client sees a dropped connection

        def sending(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await route(scope, receive, sending)
        finally:
            by_status = self._timers[endpoint]
            child = by_status.get(status)
            if child is None:
                child = by_status[status] = self.durations[endpoint, status_class(status)]
            child.observe(perf_counter() - started)

    async def serve(self, scope: Scope, send: Send) -> None:
        """``GET /metrics``: 401 without the bearer token, else the scrape."""
        assert self.scrape is not None
        headers = dict(scope["headers"])
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"use GET or HEAD", ((b"allow", b"GET, HEAD"),))
            return
        if not self.scrape.authorized(headers.get(b"authorization")):
            await _plain(send, 401, b"unauthorized", ((b"www-authenticate", b"Bearer"),))
            return
        body = await self.scrape.render()
        await _plain(send, 200, body, ctype=self.scrape.content_type.encode())


def endpoint_of(path: str, webhook_prefix: str, delivery_prefix: str, files_prefix: str) -> str:
    if path.startswith(webhook_prefix):  # every bot's: /webhook/telegram, /webhook/{key}
        return "webhook"
    if path.startswith(delivery_prefix):
        return "delivery"
    if path.startswith(files_prefix):
        return "files"
    if path in ("/healthz", "/readyz", "/metrics"):
        return path[1:]
    return "other"


async def _plain(
    send: Send,
    status: int,
    body: bytes,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    ctype: bytes = b"text/plain; charset=utf-8",
) -> None:
    head = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


DRIFT_FIELDS = ("missing", "url", "secret", "allowed_updates", "max_connections")


class WebhookCollector(Collector):
    """The ``tg_gateway_telegram_webhook_*`` metrics, read off the watchdog's last
    observation when scraped (``WebhookWatch.state``; no I/O). The two gauges come only
    from the replica holding the webhook lease, once it has seen a ``getWebhookInfo``;
    the counters are this process's, 0 on a standby."""

    def __init__(self, state: Callable[[], WebhookState | None]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        pending = GaugeMetricFamily(
            "tg_gateway_telegram_webhook_pending_updates",
            "getWebhookInfo's pending_update_count (the lease holder's last check).",
        )
        last_error = GaugeMetricFamily(
            "tg_gateway_telegram_webhook_last_error_timestamp_seconds",
            "getWebhookInfo's last_error_date (Unix time), 0 when Telegram reports none.",
        )
        errors = CounterMetricFamily(
            "tg_gateway_telegram_webhook_errors",
            "Webhook delivery errors Telegram reported (each new last_error_date once).",
        )
        reapplied = CounterMetricFamily(
            "tg_gateway_telegram_webhook_reapplied",
            "setWebhook calls the watchdog made because getWebhookInfo drifted, by field.",
            labels=["field"],
        )
        if state is not None:
            if state.holder and state.pending is not None:
                pending.add_metric([], state.pending)
                last_error.add_metric([], state.last_error_ts or 0)
            errors.add_metric([], state.errors_seen)
            for name in DRIFT_FIELDS:
                reapplied.add_metric([name], state.reapplied.get(name, 0))
        yield from (pending, last_error, errors, reapplied)
