"""``GET /api/files/{token}``: a file of an inbound message, streamed from Telegram.

The token (``gateway.core.files``) names the bot and the file. The bot must be one this
deployment serves (the registry's, or the default bot); the ingress asks Telegram's
``getFile`` with *that bot's* token for the file's path (a file id is only valid for the
bot that received it) and streams ``{TELEGRAM_API_URL}/file/bot<token>/<path>``
through in chunks of at most ``CHUNK`` bytes, at the pace the client reads. The bot token
is in those two URLs only, and nothing here logs them: aiohttp logs no request URLs, and
every error text passes ``redact``. Answers (JSON ``{"ok": false, "error", "reason"}``
but the 200):

    200  the file: Content-Type, Content-Length (Telegram's), Content-Disposition attachment
    403  bad_token: forged or malformed; bot_not_served      410  file_expired
    404  file_not_found: Telegram does not know the file   405  not GET
    413  file_too_big: over FILES_MAX_BYTES, or Telegram's "file is too big"
    502  telegram_unavailable: no usable answer            503  Telegram's 429 (Retry-After)
    504  telegram_unavailable: no answer within FILES_TIMEOUT_SECONDS

A download that fails after its headers were sent cannot change its status: the
connection is closed before Content-Length bytes, so the client sees it incomplete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.core.errors import FileTokenError
from gateway.core.files import CLOUD_MAX_BYTES, FileRef, verify_file
from gateway.core.logs import redact
from gateway.ingress.config import FilesConfig
from gateway.ingress.file_headers import content_type, disposition, download_name, download_path
from gateway.ingress.http import Door, Receive, Scope, Send
from gateway.runtime.bots import BotRegistry
from gateway.telegram.client import NO_ANSWER, BotApiError, result_of

log = logging.getLogger(__name__)

FILES_PREFIX = "/api/files/"
ENDPOINT = "files"
CHUNK = 64 * 1024
MAX_ANSWER = 64 * 1024  # getFile's answer is a few hundred bytes
TOO_BIG = (
    "file is too big for the Bot API (Telegram's 'file is too big': 20 MB on the cloud "
    "Bot API; a local Bot API server allows more, with FILES_MAX_BYTES raised)"
)


@dataclass(slots=True)
class _Progress:
    started: bool = False  # the 200's headers are sent: no other status can follow
    sent: int = 0  # bytes of the body sent


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    error: str
    retry_after: int | None = None


class Files:
    """The files endpoint of one ingress (its HTTP client is made in the running loop,
    at the first download, and closed by ``aclose``)."""

    def __init__(
        self,
        config: FilesConfig,
        door: Door,
        bots: BotRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.door = door
        self.bots = bots
        self._clock = clock
        self._base = config.api_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=10.0, sock_read=self.config.read_timeout
                ),
                connector=aiohttp.TCPConnector(limit=100),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, token: str) -> None:
        if scope["method"] != "GET":
            await _answer(send, 405, {"ok": False, "error": "use GET"}, [(b"allow", b"GET")])
            return
        try:
            ref = verify_file(self.config.secret, token, bot_id=None, now=self._clock())
        except FileTokenError as exc:
            expired = exc.reason == "expired"
            await self._refuse(
                send,
                Refusal(410 if expired else 403, "file_expired" if expired else "bad_token",
                        f"invalid file link: {exc}"),
            )  # fmt: skip
            return
        bot = await self.bots.lookup(ref.bot_id)
        if bot is None:
            error = "bot not served: the link's bot is not one this deployment serves"
            await self._refuse(send, Refusal(403, "bot_not_served", error))
            return
        if ref.file_size is not None and ref.file_size > self.config.max_bytes:
            await self._refuse(send, self._over_limit(ref.file_size))
            return
        await self._serve(ref, bot.token, receive, send)

    async def _serve(self, ref: FileRef, bot_token: str, receive: Receive, send: Send) -> None:
        progress = _Progress()
        try:
            async with asyncio.timeout(self.config.timeout):
                found = await self._locate(ref, bot_token)
                if isinstance(found, Refusal):
                    await self._refuse(send, found)
                    return
                path, file_path = found
                url = f"{self._base}/file/bot{bot_token}/{path}"
                headers = {"Accept-Encoding": "identity"}
                async with self._client().get(url, headers=headers) as resp:
                    refusal = self._download_refusal(resp.status, resp.content_length)
                    if refusal is not None:
                        await self._refuse(send, refusal)
                        return
                    length = resp.content_length
                    await send(_file_start(ref, file_path, length))
                    progress.started = True
                    await self._stream(resp, receive, send, length, progress)
        except TimeoutError:
            if not progress.started:
                error = f"Telegram did not hand out the file within {self.config.timeout:g}s"
                await self._refuse(send, Refusal(504, "telegram_unavailable", error))
                return
            timeout = f"not done within {self.config.timeout:g}s (FILES_TIMEOUT_SECONDS)"
            self._cut(progress.sent, timeout)
        except (aiohttp.ClientError, OSError) as exc:
            if not progress.started:
                await self._refuse(send, self._unreachable(exc, bot_token))
                return
            self._cut(progress.sent, self._detail(exc, bot_token))
        else:
            if progress.started:
                log.debug("file served: %s, %d bytes", ref.kind, progress.sent)

    async def _stream(
        self,
        resp: aiohttp.ClientResponse,
        receive: Receive,
        send: Send,
        length: int | None,
        progress: _Progress,
    ) -> None:
        """Copy the body through (counted in ``progress``); the answer ends only whole."""
        limit = self.config.max_bytes if length is None else min(length, self.config.max_bytes)
        gone = asyncio.create_task(_disconnected(receive))
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                if progress.sent + len(chunk) > limit:
                    self._cut(progress.sent, f"more than the {limit} bytes announced or allowed")
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                progress.sent += len(chunk)
                if gone.done():
                    log.debug("file download: the client left after %d bytes", progress.sent)
                    return
        finally:
            gone.cancel()
        if length is not None and progress.sent != length:
            self._cut(progress.sent, f"Telegram sent {progress.sent} of {length} bytes")
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _locate(self, ref: FileRef, bot_token: str) -> Refusal | tuple[str, str]:
        """``getFile``: (the quoted download path, Telegram's file_path) or the refusal."""
        url = f"{self._base}/bot{bot_token}/getFile"
        body = orjson.dumps({"file_id": ref.file_id})
        try:
            async with self._client().post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                status, content = resp.status, await _bounded(resp)
        except (aiohttp.ClientError, OSError) as exc:
            return self._unreachable(exc, bot_token)
        try:
            result = result_of("getFile", status, content, bot_token)
        except BotApiError as exc:
            return self._api_refusal(exc)
        if not isinstance(result, dict):
            return Refusal(502, "telegram_unavailable", "getFile answered no File")
        unique, size = result.get("file_unique_id"), result.get("file_size")
        if isinstance(unique, str) and unique != ref.file_unique_id:
            return Refusal(404, "file_not_found", "Telegram names another file for this id")
        if isinstance(size, int) and size > self.config.max_bytes:
            return self._over_limit(size)
        file_path = result.get("file_path")
        if not isinstance(file_path, str):
            if isinstance(size, int) and size > CLOUD_MAX_BYTES:  # no path past the limit
                return Refusal(413, "file_too_big", TOO_BIG)
            return Refusal(502, "telegram_unavailable", "getFile answered no file_path")
        path = download_path(file_path, bot_token)
        if path is None:
            error = "getFile answered a file_path that cannot be fetched over HTTP"
            return Refusal(502, "telegram_unavailable", error)
        return path, file_path

    def _api_refusal(self, exc: BotApiError) -> Refusal:
        """What a failed ``getFile`` means for the client (descriptions are redacted)."""
        code, text = exc.error_code, exc.description
        if code == 400 and "too big" in text.lower():
            return Refusal(413, "file_too_big", TOO_BIG)
        if code == 400:
            return Refusal(404, "file_not_found", f"Telegram does not know this file ({text})")
        if code == 429:
            error = "Telegram asks to wait before the next request (429); retry later"
            return Refusal(503, "telegram_unavailable", error, exc.retry_after or 1)
        if code == NO_ANSWER:
            return Refusal(502, "telegram_unavailable", f"no usable answer from Telegram: {text}")
        return Refusal(502, "telegram_unavailable", f"the Bot API answered {code}: {text}")

    def _download_refusal(self, status: int, length: int | None) -> Refusal | None:
        if status == 200:
            if length is not None and length > self.config.max_bytes:
                return self._over_limit(length)
            return None
        if status == 404:
            return Refusal(404, "file_not_found", "Telegram no longer has this file")
        if status in (400, 413):
            return Refusal(413, "file_too_big", TOO_BIG)
        return Refusal(502, "telegram_unavailable", f"Telegram's file download answered {status}")

    def _over_limit(self, size: int) -> Refusal:
        limit = self.config.max_bytes
        error = f"file is too big: {size} bytes, over FILES_MAX_BYTES ({limit} bytes)"
        return Refusal(413, "file_too_big", error)

    def _detail(self, exc: BaseException, bot_token: str) -> str:
        return redact(f"{type(exc).__name__}: {exc}", (bot_token,))

    def _unreachable(self, exc: BaseException, bot_token: str) -> Refusal:
        detail = self._detail(exc, bot_token)
        return Refusal(502, "telegram_unavailable", f"Telegram unreachable: {detail}")

    def _cut(self, sent: int, why: str) -> None:
        log.warning("file download cut short after %d bytes: %s", sent, why)

    async def _refuse(self, send: Send, refusal: Refusal) -> None:
        self.door.observe.rejected(ENDPOINT, refusal.reason)
        headers: list[tuple[bytes, bytes]] = []
        if refusal.retry_after is not None:
            headers.append((b"retry-after", str(refusal.retry_after).encode()))
        body = {"ok": False, "error": refusal.error, "reason": refusal.reason}
        await _answer(send, refusal.status, body, headers)


def _file_start(ref: FileRef, file_path: str, length: int | None) -> dict[str, Any]:
    headers = [
        (b"content-type", content_type(ref, file_path).encode()),
        (b"content-disposition", disposition(download_name(ref, file_path)).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", b"default-src 'none'; sandbox"),
        (b"cache-control", b"private, no-store"),
    ]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": 200, "headers": headers}


async def _bounded(resp: aiohttp.ClientResponse) -> bytes:
    """At most ``MAX_ANSWER`` bytes of a body (more: cut, and so not JSON)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER:
            break
    return b"".join(chunks)[:MAX_ANSWER]


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = orjson.dumps(body)
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})
