"""POSTing one receipt: aiohttp with its own bounded pool, no redirects, signed headers,
and a resolver that will not connect a wildcard-allowed name to an internal address.

The session is the receipts' own, never the pipeline's: a status URL that hangs fills
this pool only, and the pipeline's requests go on (``workers.worker.pipeline``)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from gateway.core.errors import GatewayError
from gateway.core.redact import redact_url
from gateway.core.signing import ID_HEADER, TIMESTAMP_HEADER, SigningKeys
from gateway.core.status_urls import is_public_address

CONNECTIONS = 64  # open connections to all status URLs together
PER_HOST = 32  # to one status URL's host


class ReceiptUnavailable(GatewayError):
    """The status URL did not answer (timeout, connection refused or reset): retried."""


class AddressRefused(GatewayError, OSError):
    """A status URL's name resolved only to addresses a wildcard entry may not reach
    (loopback, private, link-local, ...): not retried, dead-lettered."""


class GuardedResolver(AbstractResolver):
    """Resolves as aiohttp would, then drops every address that is not public unless
    ``trusted(host)`` (``RECEIPTS_URL``'s host, an exact allow-list entry). IP literals
    never reach a resolver: they are checked before the request
    (``StatusUrls.problem``, by the receipt's handler)."""

    def __init__(
        self, trusted: Callable[[str], bool], inner: AbstractResolver | None = None
    ) -> None:
        self._trusted = trusted
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._trusted(host):
            return found
        public = [r for r in found if is_public_address(r["host"])]
        if not public:
            raise AddressRefused(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


class ReceiptPoster:
    """Signs and POSTs receipts; answers the HTTP status (any: the caller decides)."""

    def __init__(
        self,
        keys: SigningKeys,
        timeout: float,
        trusted: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._trusted = trusted
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created inside the running loop
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(
                    limit=CONNECTIONS,
                    limit_per_host=PER_HOST,
                    resolver=GuardedResolver(self._trusted),
                ),
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
            )
        return self._session

    def headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        """``webhook-id`` and ``webhook-timestamp`` always (the CRM dedupes by the id), and
        ``webhook-signature`` with the keys (one ``v1,…`` per key)."""
        now = int(self._clock())
        out = {"Content-Type": "application/json", ID_HEADER: msg_id, TIMESTAMP_HEADER: str(now)}
        out.update(self._keys.headers(msg_id, now, body))
        return out

    async def post(self, url: str, body: bytes, msg_id: str) -> int:
        """One attempt: the status the URL answered (redirects are not followed: a 3xx
        is its answer). ``ReceiptUnavailable`` without an answer; ``AddressRefused``
        when the name leads only to internal addresses."""
        headers = self.headers(msg_id, body)
        try:
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                return resp.status
        except TimeoutError:
            raise ReceiptUnavailable(f"no answer from {redact_url(url)} in time") from None
        except aiohttp.ClientConnectorError as exc:
            refused = _refused(exc)
            if refused is not None:
                raise refused from None
            raise ReceiptUnavailable(f"{type(exc).__name__}: {redact_url(str(exc))}") from None
        except aiohttp.ClientError as exc:
            raise ReceiptUnavailable(f"{type(exc).__name__}: {redact_url(str(exc))}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _refused(exc: Any) -> AddressRefused | None:
    """The resolver's refusal inside aiohttp's connection error, if that is what it is."""
    cause = getattr(exc, "os_error", None)
    return cause if isinstance(cause, AddressRefused) else None
