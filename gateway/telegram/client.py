"""A thin raw Bot API client (httpx) for the ingress side: getUpdates keeps updates untouched.

Errors come back as ``BotApiError`` carrying Telegram's ``error_code``, description and
``retry_after``; messages never contain the token (it lives only in the URL).
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson

from gateway.core.bots import derive_webhook_secret
from gateway.core.errors import ConfigError, GatewayError
from gateway.core.logs import RedactingFilter, redact
from gateway.core.settings import TelegramSettings

__all__ = ["derive_webhook_secret"]  # re-exported: it lives in gateway.core.bots

NO_ANSWER = 0
"""``BotApiError.error_code`` of a call that got no usable answer."""


def webhook_secret_for(tg: TelegramSettings) -> str:
    """The secret webhook mode checks and registers with ``setWebhook`` (the ingress at
    start and ``tg-gateway webhook set`` both call this): ``TELEGRAM_WEBHOOK_SECRET`` if
    set, else derived from the token. Webhook mode never runs without one."""
    if tg.webhook_secret:
        return tg.webhook_secret
    if tg.telegram_bot_token is None:
        raise ConfigError(
            "TELEGRAM_WEBHOOK_SECRET: webhook mode needs a secret; set it, or set "
            "TELEGRAM_BOT_TOKEN to derive one"
        )
    return derive_webhook_secret(tg.telegram_bot_token.get_secret_value())


def webhook_params(tg: TelegramSettings) -> dict[str, Any]:
    """setWebhook's parameters from the settings: what the ingress registers and its
    watchdog compares with getWebhookInfo, and what ``tg-gateway webhook set`` sends."""
    if not tg.telegram_webhook_url:
        raise ConfigError("TELEGRAM_WEBHOOK_URL: required to set the webhook")
    return {
        "url": tg.telegram_webhook_url,
        "allowed_updates": tg.telegram_allowed_updates,
        "max_connections": tg.telegram_max_connections,
        "secret_token": webhook_secret_for(tg),
    }


class BotApiError(GatewayError):
    """A Bot API call failed; ``error_code`` 0 means no usable answer (network, timeout,
    not JSON). What to do about it: ``gateway.telegram.answers.classify``."""

    def __init__(
        self,
        method: str,
        error_code: int,
        description: str,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
    ) -> None:
        super().__init__(f"{method}: {error_code} {description}")
        self.method = method
        self.error_code = error_code
        self.description = description
        self.retry_after = retry_after
        self.migrate_to_chat_id = migrate_to_chat_id


def result_of(method: str, status: int, content: bytes, token: str = "") -> Any:
    """The ``result`` of an HTTP answer to ``method``, or the ``BotApiError`` it stands
    for, raised (pure: the unit tests feed it Telegram's real error bodies)."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise BotApiError(method, NO_ANSWER, f"non-JSON answer (HTTP {status})") from None
    if not isinstance(body, dict):
        raise BotApiError(method, NO_ANSWER, f"unexpected answer shape (HTTP {status})")
    if body.get("ok") is True:
        return body.get("result")
    params = body.get("parameters")
    params = params if isinstance(params, dict) else {}
    retry_after, migrate_to = params.get("retry_after"), params.get("migrate_to_chat_id")
    raise BotApiError(
        method,
        int(body.get("error_code") or status),
        redact(str(body.get("description") or "unknown error"), (token,)),
        retry_after=retry_after if isinstance(retry_after, int) else None,
        migrate_to_chat_id=migrate_to if isinstance(migrate_to, int) else None,
    )


def redact_httpx_logs() -> None:
    """httpx logs every request URL at INFO, and a Bot API URL holds the token: redact its
    records where they are made (a logger filter), whatever handlers the process has
    (``setup_logging`` also quiets httpx; a test's caplog or an embedding app may not)."""
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, RedactingFilter) for f in httpx_log.filters):
        httpx_log.addFilter(RedactingFilter())


class BotApi:
    """Calls ``{api_url}/bot{token}/{method}`` with JSON bodies; one pooled httpx client."""

    def __init__(self, api_url: str, token: str, timeout: float = 30.0) -> None:
        redact_httpx_logs()
        self._base = f"{api_url.rstrip('/')}/bot{token}"
        self._token = token
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        )

    async def __aenter__(self) -> BotApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """The ``result`` of a call, or ``BotApiError`` (``result_of``)."""
        extra = {} if timeout is None else {"timeout": httpx.Timeout(timeout, connect=10.0)}
        try:
            resp = await self._client.post(
                f"{self._base}/{method}",
                content=orjson.dumps(params or {}),
                headers={"Content-Type": "application/json"},
                **extra,  # type: ignore[arg-type]
            )
        except httpx.HTTPError as exc:
            detail = redact(f"{type(exc).__name__}: {exc}", (self._token,))
            raise BotApiError(method, NO_ANSWER, detail) from None
        return result_of(method, resp.status_code, resp.content, self._token)

    async def get_updates_raw(
        self, offset: int | None, limit: int, timeout: int, allowed_updates: list[str]
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "limit": limit,
            "timeout": timeout,
            "allowed_updates": allowed_updates,
        }
        if offset is not None:
            params["offset"] = offset
        result = await self.call("getUpdates", params, timeout=timeout + 15)
        if not isinstance(result, list):
            raise BotApiError("getUpdates", NO_ANSWER, "result is not a list")
        return [u for u in result if isinstance(u, dict)]
