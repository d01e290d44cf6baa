"""The sender's Bot API requests: one JSON POST on aiogram's aiohttp session, the answer
read by ``client.result_of`` (a failure is a ``BotApiError``, for ``answers``' one table).

Why not ``await bot(method)``: aiogram's path turns every parameter into form data
(``build_form_data``) and every answer into its pydantic models (``Response[Message]``),
about 0.2 ms of CPU per call that the sender, which needs only the message id, paid at
every send (docs/bench-e2e.md). The parameters are still checked by aiogram's method
models (``workers.sender.parts.METHODS``) before they come here; what goes out is the
entry's own JSON, as a CRM wrote it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from gateway.core.logs import redact
from gateway.telegram.client import NO_ANSWER, BotApiError, result_of

if TYPE_CHECKING:  # aiogram is the sender's: the ingress never loads it
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession

JSON_BODY = {"Content-Type": "application/json"}


class DirectApi:
    """Bot API calls on ``bot``'s own session (its base URL, connection pool, timeout and
    user agent; closed with ``bot.session.close()``)."""

    def __init__(self, bot: Bot) -> None:
        self._session: AiohttpSession = bot.session  # type: ignore[assignment]
        self._token = bot.token
        self._urls: dict[str, str] = {}

    @property
    def timeout(self) -> float:
        """The session's total timeout of one call, in seconds."""
        return float(self._session.timeout)

    def url(self, method: str) -> str:
        url = self._urls.get(method)
        if url is None:
            url = self._urls[method] = self._session.api.api_url(self._token, method)
        return url

    async def call(
        self, method: str, params: dict[str, Any], timeout: aiohttp.ClientTimeout | None = None
    ) -> Any:
        """Telegram's ``result``, or ``BotApiError`` (its code 0: no usable answer: a
        network error, a timeout, a body that is not JSON). Never shows the token."""
        http = await self._session.create_session()
        try:
            async with http.post(
                self.url(method),
                data=orjson.dumps(params),
                headers=JSON_BODY,
                timeout=timeout or aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                status, content = resp.status, await resp.read()
        except TimeoutError:
            raise BotApiError(method, NO_ANSWER, "request timed out") from None
        except aiohttp.ClientError as exc:
            detail = redact(f"{type(exc).__name__}: {exc}", (self._token,))
            raise BotApiError(method, NO_ANSWER, detail) from None
        return result_of(method, status, content, self._token)
