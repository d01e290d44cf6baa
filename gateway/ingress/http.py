"""ASGI plumbing shared by the ingress's endpoints (pure of any route): types, bounded
body reading, JSON answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from gateway.core.errors import GatewayError
from gateway.ingress.observe import IngressMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY_TIMEOUT_ERROR = "request body not received in time"
STORAGE_ERROR = "storage unavailable, retry"


class BodyTimeout(GatewayError):
    """The body did not arrive within the body timeout (HTTP 408)."""


class BodyTooLarge(GatewayError):
    """The body is over the size limit (HTTP 413)."""


async def read_body(scope: Scope, receive: Receive, *, limit: int, timeout: float) -> bytes:
    """The whole body within ``timeout`` seconds (``BodyTimeout``) and ``limit`` bytes
    (``BodyTooLarge``): a client sending a byte now and then holds nothing for long.
    ``ConnectionResetError`` if the client went away."""
    try:
        async with asyncio.timeout(timeout):
            return await _read_body_unbounded(scope, receive, limit)
    except TimeoutError:
        raise BodyTimeout from None


async def _read_body_unbounded(scope: Scope, receive: Receive, limit: int) -> bytes:
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


def text_headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def is_json(headers: dict[bytes, bytes]) -> bool:
    ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    return ctype == b"application/json"


async def json_response(
    send: Send,
    status: int,
    body: dict[str, Any],
    *,
    close: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    payload = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *extra,
    ]
    if close:  # the rest of the request may still be on its way: do not read it
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def method_not_allowed(send: Send, allow: str) -> None:
    """405 with the ``Allow`` header RFC 9110 asks for (``allow``: ``"POST"``, ...)."""
    error = f"use {allow.replace(', ', ' or ')}"
    await json_response(
        send, 405, {"ok": False, "error": error}, extra=((b"allow", allow.encode()),)
    )


class Door:
    """Refusals and bounded JSON bodies for one ingress (counted by endpoint and reason)."""

    def __init__(self, observe: IngressMetrics, *, max_body_bytes: int, body_timeout: float):
        self.observe = observe
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def refuse(
        self,
        send: Send,
        endpoint: str,
        reason: str,
        status: int,
        error: str,
        close: bool = False,
        bot_id: int | None = None,
    ) -> None:
        """Answer a refused request (counted by endpoint and reason; a webhook's by the
        bot its path named, ``bot_id``)."""
        self.observe.rejected(endpoint, reason, bot_id)
        await json_response(send, status, {"ok": False, "error": error}, close=close)

    async def read_json_body(
        self, scope: Scope, receive: Receive, send: Send, endpoint: str, bot_id: int | None = None
    ) -> bytes | None:
        """The body of a request that must be JSON, or None once the client has its answer:
        415 (not ``application/json``), 413 (too large), 408 (not in time); none to a
        client that went away."""
        if not is_json(dict(scope["headers"])):
            await self.refuse(
                send,
                endpoint,
                "content_type",
                415,
                "Content-Type must be application/json",
                bot_id=bot_id,
            )
            return None
        try:
            return await read_body(
                scope, receive, limit=self.max_body_bytes, timeout=self.body_timeout
            )
        except BodyTooLarge:
            await self.refuse(send, endpoint, "too_large", 413, "body too large", bot_id=bot_id)
        except BodyTimeout:
            await self.refuse(send, endpoint, "body_timeout", 408, BODY_TIMEOUT_ERROR, True, bot_id)
        except ConnectionResetError:
            pass
        return None
