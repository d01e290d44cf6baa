"""Pipeline adapters: the external HTTP pipeline and the embedded reference pipeline.

Both take a ``PipelineMessage`` and return an optional reply body (a dict in one of the
shapes ``gateway.replies`` accepts). The external one raises ``PipelineRejected`` (4xx)
or ``PipelineUnavailable`` (5xx, timeout, connection error).
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
import orjson

from gateway.errors import PipelineRejected, PipelineUnavailable
from workers.adapter import PipelineMessage
from workers.reference import respond


class Pipeline(Protocol):
    name: str

    async def submit(
        self, message: PipelineMessage, callback_url: str | None, idempotency_key: str
    ) -> dict[str, Any] | None: ...

    async def healthy(self) -> bool: ...

    async def aclose(self) -> None: ...


class HttpPipeline:
    """``POST {url}/api/messages/`` with ``X-Webhook-URL`` and ``Idempotency-Key``."""

    name = "http"

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
        )

    async def submit(
        self, message: PipelineMessage, callback_url: str | None, idempotency_key: str
    ) -> dict[str, Any] | None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        if callback_url:
            headers["X-Webhook-URL"] = callback_url
        try:
            resp = await self._client.post(
                f"{self.base_url}/api/messages/",
                content=orjson.dumps(message.body()),
                headers=headers,
            )
        except httpx.TimeoutException as exc:
            raise PipelineUnavailable(f"timeout: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise PipelineUnavailable(f"{type(exc).__name__}: {exc}") from None
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise PipelineUnavailable(f"pipeline answered {resp.status_code}", resp.status_code)
        if resp.status_code >= 400:
            raise PipelineRejected(resp.status_code, resp.text)
        if resp.status_code in (200, 201) and resp.content:
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                return None
            return body if isinstance(body, dict) else None
        return None  # 202 and friends: the reply comes later on the callback

    async def healthy(self) -> bool:
        try:
            resp = await self._client.get(f"{self.base_url}/healthz", timeout=3.0)
        except httpx.HTTPError:
            return False
        return resp.status_code < 500

    async def aclose(self) -> None:
        await self._client.aclose()


class EmbeddedPipeline:
    """The reference pipeline in-process: rule-based replies, no network."""

    name = "embedded"

    async def submit(
        self, message: PipelineMessage, callback_url: str | None, idempotency_key: str
    ) -> dict[str, Any] | None:
        reply = respond(message.client_id, message.content)
        return {
            "content": reply.content,
            "category": reply.category.value,
            "escalated": reply.escalated,
        }

    async def healthy(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
