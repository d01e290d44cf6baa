"""The ingress's HTTP connections, bounded: uvicorn's httptools protocol with the limits it
lacks for slow and many clients (``BoundedHttpTools``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.core.settings import IngressSettings
from gateway.ingress.observe import IngressMetrics

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024


def _plain(status: bytes, text: bytes) -> bytes:
    """A complete ``connection: close`` answer, written before the ASGI app is involved."""
    head = b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
    return head + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(text) + text


_408 = _plain(b"408 Request Timeout", b"request not received in time")
_431 = _plain(b"431 Request Header Fields Too Large", b"request headers too large")
_503 = _plain(b"503 Service Unavailable", b"too many connections")


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds it lacks for slow clients.

    uvicorn arms its keep-alive timer only after a response, so a fresh connection that
    sends nothing, or one header line now and then, stays open forever, and it accepts
    every connection. Here:

    - at most ``max_connections`` are open: the next one gets 503 and is closed;
    - a request's headers must be complete within ``header_timeout`` of the connection
      opening (first request) or of its first byte (later ones), and at most
      ``MAX_HEADER_BYTES`` long (431);
    - its body must be complete within ``body_timeout`` (+1 s: the app's own deadline in
      ``IngressApp._read_body`` answers a JSON 408 first; this one also covers bodies the
      app never reads, e.g. after a 401).

    Past a deadline: 408 (if no response started) and the connection is closed.
    """

    max_connections = 1000
    header_timeout = 10.0
    body_timeout = 10.0
    observe = IngressMetrics.off()
    _refused_logged_at = -1e9  # a flood of refusals logs a line per 10 s, not per refusal

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._fresh = True  # no request headers seen yet on this connection
        self._in_headers = False
        self._header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self.transport = transport
            transport.write(_503)
            transport.close()
            self.observe.rejected("connection", "overloaded")
            now = time.monotonic()
            if now - BoundedHttpTools._refused_logged_at > 10:
                BoundedHttpTools._refused_logged_at = now
                log.warning(
                    "refusing connections: %d open (INGRESS_MAX_CONNECTIONS)",
                    len(self.connections),
                )
            return
        super().connection_made(transport)
        self._in_headers = True
        self._arm(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.parser is None or self.flow is None:  # refused in connection_made
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.flow is None:  # refused
            return
        super().data_received(data)
        if self._in_headers and self.parser is not None:
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._end(_431)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        if not self._fresh:  # a fresh connection's deadline runs from connect
            self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        self._fresh = self._in_headers = False
        self._arm(self.body_timeout + 1.0)
        limit = self.limit_concurrency  # uvicorn's own check, made just after this one
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.observe.rejected("connection", "overloaded")  # uvicorn answers the 503
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        if self.cycle is not None and self.cycle.response_complete:
            # Answered before the body was in (e.g. a 401): uvicorn's keep-alive timer was
            # armed at the answer and dropped by the body's bytes; idle from now on.
            self._arm(float(self.timeout_keep_alive))
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self._end(_408)

    def _end(self, answer: bytes) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or (self.cycle.response_complete and self._in_headers):
            self.transport.write(answer)  # a new request, and nothing else being written
        self.transport.close()


def bounded_protocol(
    ing: IngressSettings, observe: IngressMetrics | None = None
) -> type[BoundedHttpTools]:
    """The protocol class uvicorn builds per connection, with this ingress's bounds."""
    return type(
        "BoundedHttpTools",
        (BoundedHttpTools,),
        {
            "max_connections": ing.ingress_max_connections,
            "header_timeout": ing.ingress_header_timeout,
            "body_timeout": ing.ingress_body_timeout,
            "observe": observe or IngressMetrics.off(),
        },
    )
