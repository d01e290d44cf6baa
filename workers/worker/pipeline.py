"""Pipeline adapters: the external HTTP pipeline and an embedded, in-process one.

Both take a ``PipelineMessage`` and return an optional reply body (a dict in one of the
shapes ``gateway.core.replies`` accepts). The external one raises ``PipelineRejected`` (4xx),
``PipelineUnavailable`` (5xx, timeout, connection error) or ``ReplyShapeError`` (a JSON
reply body that does not decode, e.g. nested past the decoder's depth limit).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import orjson

from gateway.core.errors import PipelineRejected, PipelineUnavailable, ReplyShapeError
from gateway.core.signing import SigningKeys
from workers.worker.adapter import PipelineMessage


class Pipeline(Protocol):
    name: str

    async def submit(
        self, message: PipelineMessage, callback_url: str | None, idempotency_key: str
    ) -> dict[str, Any] | None: ...

    async def healthy(self) -> bool: ...

    async def aclose(self) -> None: ...


class HttpPipeline:
    """``POST {url}/api/messages/`` with ``X-Webhook-URL`` and ``Idempotency-Key``.

    With ``signing_keys``, each attempt is signed per Standard Webhooks: ``webhook-id`` is
    the idempotency key (the same on every retry), ``webhook-timestamp`` the attempt's
    time (``clock``), ``webhook-signature`` one ``v1,…`` per key over the exact body sent.

    aiohttp, not httpx: under load httpx/httpcore spent ~80% of a worker's CPU scanning
    its connection pool (py-spy, bench/workers.py), capping a worker at ~180 updates/s
    against a 50 ms pipeline.
    """

    name = "http"

    def __init__(
        self,
        base_url: str,
        timeout: float,
        signing_keys: SigningKeys | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._keys = signing_keys if signing_keys is not None else SigningKeys()
        self._clock = clock
        self._pool = _Pool(aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0)))

    def with_keys(self, signing_keys: SigningKeys) -> HttpPipeline:
        """The same pipeline (URL, connection pool) signing with other keys: a bot's own
        ``pipeline_secret`` (issue 15). Closing either closes the pool they share."""
        other = copy.copy(self)
        other._keys = signing_keys
        return other

    def _client(self) -> aiohttp.ClientSession:
        return self._pool.session()

    async def submit(
        self, message: PipelineMessage, callback_url: str | None, idempotency_key: str
    ) -> dict[str, Any] | None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        if callback_url:
            headers["X-Webhook-URL"] = callback_url
        data = orjson.dumps(message.body())
        headers.update(self._keys.headers(idempotency_key, int(self._clock()), data))
        try:
            async with self._client().post(
                f"{self.base_url}/api/messages/",
                data=data,
                headers=headers,
            ) as resp:
                status = resp.status
                content = await resp.read()
                json_type = resp.content_type.endswith(("/json", "+json"))
        except TimeoutError:
            raise PipelineUnavailable("timeout") from None
        except aiohttp.ClientError as exc:
            raise PipelineUnavailable(f"{type(exc).__name__}: {exc}") from None
        if status >= 500 or status in (408, 429):
            raise PipelineUnavailable(f"pipeline answered {status}", status)
        if status >= 400:
            raise PipelineRejected(status, content.decode(errors="replace"))
        if status in (200, 201) and content:
            try:
                body = orjson.loads(content)
            except orjson.JSONDecodeError as exc:
                if json_type or content.lstrip()[:1] in (b"{", b"["):
                    raise ReplyShapeError(f"reply body is not usable JSON: {exc}") from None
                return None  # e.g. "OK" as text: no reply in the body
            return body if isinstance(body, dict) else None
        return None  # 202 and friends: the reply comes later on the callback

    async def healthy(self) -> bool:
        try:
            async with self._client().get(
                f"{self.base_url}/healthz", timeout=aiohttp.ClientTimeout(total=3.0)
            ) as resp:
                return resp.status < 500
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def aclose(self) -> None:
        await self._pool.aclose()


class _Pool:
    """One pipeline URL's aiohttp session, created inside the running loop on first use."""

    def __init__(self, timeout: aiohttp.ClientTimeout) -> None:
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=256),
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class EmbeddedPipeline:
    """A pipeline in-process, no network: ``answer(client_id, content)`` gives the reply body
    to what the user wrote; an event or a deep link gets none (the reference pipeline's
    rules answer text, and the user was greeted already).

    The composition root passes the reference pipeline's ``reply_body``
    (``gateway.testkit.reference.rules``), so the worker does not depend on the test kit.
    """

    name = "embedded"

    def __init__(self, answer: Callable[[str, str], dict[str, Any] | None]) -> None:
        self._answer = answer

    async def submit(
        self, message: PipelineMessage, callback_url: str | None, idempotency_key: str
    ) -> dict[str, Any] | None:
        if message.quiet:
            return None
        return self._answer(message.client_id, message.content)

    async def healthy(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
