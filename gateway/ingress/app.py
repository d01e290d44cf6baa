"""The ingress HTTP service: Telegram webhook, pipeline callbacks, health (a bare ASGI app).

Bare ASGI rather than FastAPI: the webhook is the hot path, so no framework sits between
uvicorn and the handler (figures: README, bench/ingress.py). Routes:

    POST /webhook/telegram        Telegram updates  → updates stream (200 only once stored);
                                  webhook mode only (always with a secret), else 404
    POST /api/delivery/{token}    pipeline replies  → outbound stream (with
                                  CALLBACK_SIGNING_KEYS also a Standard Webhooks
                                  signature, else 401 with the reason)
    GET  /healthz                 process up
    GET  /readyz                  Redis reachable, streams and groups present
    GET  /metrics                 Prometheus, with the METRICS_TOKEN bearer; else 404
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.contracts import Keys
from gateway.core.errors import (
    DeliveryTokenError,
    GatewayError,
    RedisUnavailable,
    ReplyShapeError,
    SignatureError,
)
from gateway.core.replies import parse_reply, reply_entries
from gateway.core.signing import SigningKeys, check_headers
from gateway.core.tokens import verify_route
from gateway.ingress.observe import IngressMetrics, endpoint_of
from gateway.ingress.updates import InvalidUpdate, parse_update
from gateway.runtime.streams import UpdatePublisher, groups_present, publish_outbound

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WEBHOOK_PATH = "/webhook/telegram"
DELIVERY_PREFIX = "/api/delivery/"
SECRET_HEADER = b"x-telegram-bot-api-secret-token"
BODY_TIMEOUT_ERROR = "request body not received in time"
STORAGE_ERROR = "storage unavailable, retry"


@dataclass(frozen=True, slots=True)
class IngressConfig:
    bot_id: int
    keys: Keys
    webhook_secret: str | None  # None: no webhook route (polling mode), 404
    delivery_secret: bytes | None
    max_body_bytes: int
    reply_fields: tuple[str, ...]
    outbound_ttl: float
    body_timeout: float = 10.0  # seconds to receive a body once the headers are in
    store_timeout: float = 3.0  # longest wait for Redis before answering 503
    callback_keys: SigningKeys = field(default_factory=SigningKeys)  # none: not checked


class BodyTimeout(GatewayError):
    """The body did not arrive within ``body_timeout`` (HTTP 408)."""


class BodyTooLarge(GatewayError):
    """The body is over ``max_body_bytes`` (HTTP 413)."""


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
    ) -> None:
        self.config = config
        self._redis_factory = redis_factory
        self._dedupe_ttl = dedupe_ttl
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self.redis: aioredis.Redis | None = None
        self.publisher: UpdatePublisher | None = None
        self.observe = observe or IngressMetrics.off()
        m = self.observe
        self._accepted, self._duplicate = (
            m.updates["webhook", "accepted"],
            m.updates["webhook", "duplicate"],
        )
        self._stored = m.callbacks["stored"]

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
            endpoint = endpoint_of(scope["path"], WEBHOOK_PATH, DELIVERY_PREFIX)
            await self.observe.timed(self._route, endpoint, scope, receive, send)
        else:
            await self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == WEBHOOK_PATH and self.config.webhook_secret is not None:
            if method != "POST":
                await _json(send, 405, {"ok": False, "error": "use POST"})
                return
            await self._webhook(scope, receive, send)
        elif path.startswith(DELIVERY_PREFIX):
            if method != "POST":
                await _json(send, 405, {"ok": False, "error": "use POST"})
                return
            await self._delivery(scope, receive, send, path[len(DELIVERY_PREFIX) :])
        elif path == "/healthz":
            await _json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await self._readyz(send)
        elif path == "/metrics" and self.observe.scrape is not None:
            await self.observe.serve(scope, send)
        else:
            await _json(send, 404, {"ok": False, "error": "not found"})

    async def _refuse(
        self, send: Send, endpoint: str, reason: str, status: int, error: str, close: bool = False
    ) -> None:
        """Answer a refused request (counted by endpoint and reason)."""
        self.observe.rejected(endpoint, reason)
        await _json(send, status, {"ok": False, "error": error}, close=close)

    async def _read_json_body(
        self, scope: Scope, receive: Receive, send: Send, endpoint: str
    ) -> bytes | None:
        """The body of a request that must be JSON, or None once the client has its answer:
        415 (not ``application/json``), 413 (too large), 408 (not in time); none to a
        client that went away."""
        if not _is_json(dict(scope["headers"])):
            await self._refuse(
                send, endpoint, "content_type", 415, "Content-Type must be application/json"
            )
            return None
        try:
            return await self._read_body(scope, receive)
        except BodyTooLarge:
            await self._refuse(send, endpoint, "too_large", 413, "body too large")
        except BodyTimeout:
            await self._refuse(send, endpoint, "body_timeout", 408, BODY_TIMEOUT_ERROR, close=True)
        except ConnectionResetError:
            pass
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body within ``body_timeout`` (``BodyTimeout``) and ``max_body_bytes``
        (``BodyTooLarge``): a client sending a byte now and then holds nothing for long."""
        try:
            async with asyncio.timeout(self.config.body_timeout):
                return await self._read_body_unbounded(scope, receive)
        except TimeoutError:
            raise BodyTimeout from None

    async def _read_body_unbounded(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.config.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        raise BodyTooLarge
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionResetError("client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        expected = self.config.webhook_secret
        assert expected is not None  # no route without a secret
        given = headers.get(SECRET_HEADER, b"")
        if not hmac.compare_digest(given, expected.encode()):
            await self._refuse(send, "webhook", "bad_secret", 401, "bad or missing secret token")
            return
        body = await self._read_json_body(scope, receive, send, "webhook")
        if body is None:
            return
        try:
            update_id, chat_id = parse_update(body)
        except InvalidUpdate as exc:
            await self._refuse(send, "webhook", "bad_json", 400, str(exc))
            return
        assert self.publisher is not None
        try:
            new = await self.publisher.publish(
                bot_id=self.config.bot_id,
                update_id=update_id,
                chat_id=chat_id,
                source="webhook",
                raw_update=body,
            )
        except RedisUnavailable as exc:
            log.warning("update %s not stored, answering 503: %s", update_id, exc)
            await self._refuse(send, "webhook", "storage_unavailable", 503, STORAGE_ERROR)
            return
        (self._accepted if new else self._duplicate).inc()
        await _json(send, 200, {"ok": True, "duplicate": not new})

    async def _delivery(self, scope: Scope, receive: Receive, send: Send, token: str) -> None:
        secret = self.config.delivery_secret
        if secret is None:
            error = "delivery disabled: no DELIVERY_SECRET"
            await self._refuse(send, "delivery", "delivery_disabled", 503, error)
            return
        try:
            route = verify_route(secret, token, bot_id=self.config.bot_id)
        except DeliveryTokenError as exc:
            error = f"invalid delivery token: {exc}"
            await self._refuse(send, "delivery", "bad_token", 403, error)
            return
        keys = self.config.callback_keys
        signed = _text_headers(scope) if keys else {}
        if keys and not await self._signed(send, route.update_id, signed, None, keys):
            return  # refused before reading the body: missing, malformed or stale
        body = await self._read_json_body(scope, receive, send, "delivery")
        if body is None:
            return
        if keys and not await self._signed(send, route.update_id, signed, body, keys):
            return
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            error = f"body is not valid JSON: {exc}"
            await self._refuse(send, "delivery", "bad_json", 400, error)
            return
        try:
            reply = parse_reply(data, self.config.reply_fields)
        except ReplyShapeError as exc:
            await self._refuse(send, "delivery", "bad_reply", 422, str(exc))
            return
        entries = reply_entries(route, reply, origin="pipeline", ttl=self.config.outbound_ttl)
        assert self.redis is not None
        try:
            async with asyncio.timeout(self.config.store_timeout):
                await publish_outbound(self.redis, self.config.keys, entries)
        except TimeoutError:
            log.warning(
                "reply for update %s not stored: no answer from Redis within %gs",
                route.update_id,
                self.config.store_timeout,
            )
            await self._refuse(send, "delivery", "storage_unavailable", 503, STORAGE_ERROR)
            return
        except RedisUnavailable as exc:
            log.warning("reply for update %s not stored: %s", route.update_id, exc)
            await self._refuse(send, "delivery", "storage_unavailable", 503, STORAGE_ERROR)
            return
        self._stored.inc()
        await _json(send, 200, {"ok": True, "reply_ids": [e.reply_id for e in entries]})

    async def _signed(
        self,
        send: Send,
        update_id: int,
        headers: dict[str, str],
        body: bytes | None,
        keys: SigningKeys,
    ) -> bool:
        """Check a callback's Standard Webhooks headers (``body`` None: all but the HMAC);
        on failure answer 401 with the reason (counted: ``bad_signature``), return False."""
        try:
            if body is None:
                check_headers(headers, time.time())
            else:
                keys.verify(headers, body, time.time())
        except SignatureError as exc:
            log.info("callback for update %s refused: %s (%s)", update_id, exc.reason, exc)
            self.observe.rejected("delivery", "bad_signature")
            error = f"signature refused: {exc}"
            await _json(send, 401, {"ok": False, "error": error, "reason": exc.reason})
            return False
        return True

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


def _text_headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _is_json(headers: dict[bytes, bytes]) -> bool:
    ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    return ctype == b"application/json"


async def _json(send: Send, status: int, body: dict[str, Any], *, close: bool = False) -> None:
    payload = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if close:  # the rest of the request may still be on its way: do not read it
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
