"""The ingress HTTP service: Telegram webhook, pipeline callbacks, health (a bare ASGI app).

Bare ASGI rather than FastAPI: the webhook is the hot path, so no framework sits between
uvicorn and the handler (figures: README, bench/ingress.py). Routes:

    POST /webhook/telegram        the default bot's (TELEGRAM_BOT_TOKEN) updates → updates
                                  stream (200 only once stored); webhook mode only (always
                                  with a secret), else 404
    POST /webhook/{path_key}      a registry bot's updates, checked with that bot's own
                                  secret (401); an unknown, removed or polled bot's key
                                  answers as an unknown route does (404); only while the
                                  registry's bots use webhooks (``config.bot_webhooks``)
    POST /api/delivery/{token}    pipeline replies  → outbound stream (``delivery``: the
                                  token signed with its bot's key, the bot one this
                                  deployment serves, else 403; with CALLBACK_SIGNING_KEYS
                                  also a Standard Webhooks signature, else 401)
    GET  /api/files/{token}       a file of an inbound message, streamed from Telegram with
                                  the token of the link's bot, which must be served (403)
                                  (``files``); only with FILES_SECRET, else 404
    GET  /healthz                 process up
    GET  /readyz                  Redis reachable, streams and groups present
    GET  /metrics                 Prometheus, with the METRICS_TOKEN bearer; else 404
    GET  /openapi.json            this API's OpenAPI 3.1 document (``openapi``), public;
                                  only with OPENAPI_ENABLED, else 404

Another method than a route's is 405 with ``Allow``; any other path is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.bots import PATH_KEY_RE, BotSpec
from gateway.core.errors import RedisUnavailable
from gateway.ingress.config import IngressConfig
from gateway.ingress.delivery import Delivery
from gateway.ingress.files import FILES_PREFIX, Files
from gateway.ingress.http import (
    BODY_TIMEOUT_ERROR,
    STORAGE_ERROR,
    BodyTimeout,
    BodyTooLarge,
    Door,
    Receive,
    Scope,
    Send,
    method_not_allowed,
)
from gateway.ingress.http import json_response as _json
from gateway.ingress.observe import IngressMetrics, endpoint_of
from gateway.ingress.openapi.document import served as openapi_document
from gateway.ingress.updates import InvalidUpdate, parse_update
from gateway.runtime.bots import BotRegistry
from gateway.runtime.streams import UpdatePublisher, groups_present

__all__ = [
    "BODY_TIMEOUT_ERROR",
    "STORAGE_ERROR",
    "BodyTimeout",
    "BodyTooLarge",
    "IngressApp",
    "IngressConfig",
]

log = logging.getLogger(__name__)

WEBHOOK_PREFIX = "/webhook/"
WEBHOOK_PATH = "/webhook/telegram"
DELIVERY_PREFIX = "/api/delivery/"
OPENAPI_PATH = "/openapi.json"
SECRET_HEADER = b"x-telegram-bot-api-secret-token"


class IngressApp:
    """The ASGI callable. Redis and the publisher are created in the lifespan."""

    def __init__(
        self,
        config: IngressConfig,
        redis_factory: Callable[[], aioredis.Redis],
        dedupe_ttl: int,
        on_startup: Callable[[IngressApp], Awaitable[None]] | None = None,
        on_shutdown: Callable[[IngressApp], Awaitable[None]] | None = None,
        observe: IngressMetrics | None = None,
        bots: BotRegistry | None = None,
    ) -> None:
        self.config = config
        # The bots served: the default one (config.bot_id) and the registry's.
        self.bots = bots or BotRegistry.fixed(config.keys, [])
        self._redis_factory = redis_factory
        self._dedupe_ttl = dedupe_ttl
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self.redis: aioredis.Redis | None = None
        self.publisher: UpdatePublisher | None = None
        self.observe = observe or IngressMetrics.off()
        m = self.observe
        self.door = Door(m, max_body_bytes=config.max_body_bytes, body_timeout=config.body_timeout)
        self._default_secret = (
            None if config.webhook_secret is None else config.webhook_secret.encode()
        )
        self._delivery = Delivery(config, self.door, lambda: self.redis, self.bots)
        self._files = None if config.files is None else Files(config.files, self.door, self.bots)

    # --- lifespan ---------------------------------------------------------------------

    async def startup(self) -> None:
        self.redis = self._redis_factory()
        self.publisher = UpdatePublisher(
            self.redis, self.config.keys, self._dedupe_ttl, self.config.store_timeout
        )
        if self.observe.scrape is not None:
            self.observe.scrape.watch(self.redis, self.config.keys)
        if self._on_startup is not None:
            await self._on_startup(self)

    async def shutdown(self) -> None:
        if self._on_shutdown is not None:
            try:
                await self._on_shutdown(self)
            except Exception:
                log.exception("ingress shutdown hook failed")
        if self._files is not None:
            await self._files.aclose()
        if self.publisher is not None:
            await self.publisher.aclose()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("ingress startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- HTTP ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.observe.on:
            endpoint = endpoint_of(scope["path"], WEBHOOK_PREFIX, DELIVERY_PREFIX, FILES_PREFIX)
            await self.observe.timed(self._route, endpoint, scope, receive, send)
        else:
            await self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == WEBHOOK_PATH and self._default_secret is not None:
            if method != "POST":
                await method_not_allowed(send, "POST")
                return
            await self._webhook(scope, receive, send, self.config.bot_id, self._default_secret)
        elif path.startswith(WEBHOOK_PREFIX) and self.config.bot_webhooks:
            bot = await self._hooked(path[len(WEBHOOK_PREFIX) :])
            if bot is None or bot.webhook_secret is None:
                await _json(send, 404, {"ok": False, "error": "not found"})  # as unknown
            elif method != "POST":
                await method_not_allowed(send, "POST")
            else:
                secret = bot.webhook_secret.encode()
                await self._webhook(scope, receive, send, bot.bot_id, secret)
        elif path.startswith(DELIVERY_PREFIX):
            if method != "POST":
                await method_not_allowed(send, "POST")
                return
            await self._delivery(scope, receive, send, path[len(DELIVERY_PREFIX) :])
        elif path.startswith(FILES_PREFIX) and self._files is not None:
            await self._files(scope, receive, send, path[len(FILES_PREFIX) :])
        elif path in ("/healthz", "/readyz") or (path == OPENAPI_PATH and self.config.openapi):
            if method not in ("GET", "HEAD"):
                await method_not_allowed(send, "GET, HEAD")
            elif path == "/healthz":
                await _json(send, 200, {"status": "ok"})
            elif path == "/readyz":
                await self._readyz(send)
            else:
                await _document(send, openapi_document())
        elif path == "/metrics" and self.observe.scrape is not None:
            await self.observe.serve(scope, send)
        else:
            await _json(send, 404, {"ok": False, "error": "not found"})

    async def _hooked(self, path_key: str) -> BotSpec | None:
        """The active registry bot of a webhook path key (a key of another shape is not
        looked up: no registry read for garbage)."""
        if not PATH_KEY_RE.fullmatch(path_key):
            return None
        bot = await self.bots.lookup_path(path_key)
        return bot if bot is not None and bot.active else None

    async def _webhook(
        self, scope: Scope, receive: Receive, send: Send, bot_id: int, expected: bytes
    ) -> None:
        headers = dict(scope["headers"])
        given = headers.get(SECRET_HEADER, b"")
        if not hmac.compare_digest(given, expected):
            await self.door.refuse(
                send, "webhook", "bad_secret", 401, "bad or missing secret token", bot_id=bot_id
            )
            return
        body = await self.door.read_json_body(scope, receive, send, "webhook", bot_id)
        if body is None:
            return
        try:
            update_id, chat_id = parse_update(body)
        except InvalidUpdate as exc:
            await self.door.refuse(send, "webhook", "bad_json", 400, str(exc), bot_id=bot_id)
            return
        assert self.publisher is not None
        try:
            new = await self.publisher.publish(
                bot_id=bot_id,
                update_id=update_id,
                chat_id=chat_id,
                source="webhook",
                raw_update=body,
            )
        except RedisUnavailable as exc:
            log.warning("update %s not stored, answering 503: %s", update_id, exc)
            await self.door.refuse(
                send, "webhook", "storage_unavailable", 503, STORAGE_ERROR, bot_id=bot_id
            )
            return
        self.observe.for_bot(bot_id).updates["webhook", "accepted" if new else "duplicate"].inc()
        await _json(send, 200, {"ok": True, "duplicate": not new})

    async def _readyz(self, send: Send) -> None:
        if self.redis is None:
            await _json(send, 503, {"ready": False, "error": "starting"})
            return
        try:
            async with asyncio.timeout(2.0):
                await self.redis.ping()
                missing = await groups_present(self.redis, self.config.keys)
        except (RedisError, OSError, TimeoutError) as exc:
            await _json(send, 503, {"ready": False, "error": f"redis: {type(exc).__name__}"})
            return
        if missing:
            await _json(send, 503, {"ready": False, "error": "groups missing", "streams": missing})
            return
        await _json(send, 200, {"ready": True})


async def _document(send: Send, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
