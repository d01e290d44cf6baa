"""Exporting the metrics: the Redis-read stream gauges, the scrape, and the small
``/metrics`` listener of the worker and the sender (the ingress serves its own).

Stream gauges are read when scraped, bounded by ``GAUGE_TIMEOUT``: a Redis that does not
answer costs a scrape at most that long, and the scrape then carries every in-process
metric without the Redis-read ones (``tg_gateway_stream_gauge_errors_total`` counts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import ResponseError

from gateway.core.contracts import GROUP_SENDERS, GROUP_WORKERS, Keys
from gateway.core.metrics import BY_NAME, Metrics, bearer_ok

log = logging.getLogger(__name__)

GAUGE_TIMEOUT = 2.0  # seconds the Redis reads of one scrape may take
LAG_FALLBACK_CAP = 10_000  # entries counted when XINFO GROUPS cannot tell the lag
ROLE_STREAMS = (("worker", "updates", GROUP_WORKERS), ("sender", "outbound", GROUP_SENDERS))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_ms(entry_id: Any) -> int:
    return int(_s(entry_id).split("-", 1)[0])


def _gauge(name: str, labels: tuple[str, ...]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, BY_NAME[name].help, labels=list(labels))


class StreamGauges:
    """Reads the stream and role gauges of one layout from Redis (every role's streams,
    whichever role asks: every process reports the same values)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, metrics: Metrics) -> None:
        self.redis = redis
        self.keys = keys
        self.wanted = {s.name for s in metrics.scraped}
        self._errors = metrics.child("tg_gateway_stream_gauge_errors_total")
        self._warned_at = -1e9

    async def read(self, timeout: float = GAUGE_TIMEOUT) -> list[Metric]:
        """The gauges, or none (counted, logged once a minute) if Redis fails or is slow."""
        if not self.wanted:
            return []
        try:
            async with asyncio.timeout(timeout):
                return await self._read()
        except Exception as exc:
            self._errors.inc()
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("metrics: stream gauges not read (%s: %s)", type(exc).__name__, exc)
            return []

    async def _read(self) -> list[Metric]:
        """Two pipelined round trips (not a dozen awaited commands per partition): XLEN and
        XINFO GROUPS of every partition, then what those answers call for."""
        sec, usec = await self.redis.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        plan = [
            (role, kind, group, stream)
            for role, kind, group in ROLE_STREAMS
            for stream in (
                self.keys.all_updates() if kind == "updates" else self.keys.all_outbound()
            )
        ]
        first = self.redis.pipeline(transaction=False)
        for _, _, _, stream in plan:
            first.xlen(stream)
            first.xinfo_groups(stream)
        first.xlen(self.keys.results)
        first.xlen(self.keys.dead)
        answers = await first.execute(raise_on_error=False)
        for answer in answers[1::2][: len(plan)]:  # a missing stream: no group yet, fine
            if isinstance(answer, Exception) and not isinstance(answer, ResponseError):
                raise answer
        for answer in (*answers[0 : 2 * len(plan) : 2], *answers[2 * len(plan) :]):
            if isinstance(answer, Exception):
                raise answer
        ours = [_group_of(answers[2 * n + 1], group) for n, (_, _, group, _) in enumerate(plan)]
        second = self.redis.pipeline(transaction=False)
        for (_, _, group, stream), row in zip(plan, ours, strict=True):
            if row is not None:
                after = f"({_s(row['last-delivered-id'])}"
                second.xrange(stream, min=after, count=1)
                if row.get("lag") is None:  # Redis cannot tell (entries deleted): count
                    second.xrange(stream, min=after, count=LAG_FALLBACK_CAP)
                if int(row["pending"]):
                    second.xpending(stream, group)
        for role, _, _ in ROLE_STREAMS:
            second.zcount(self.keys.members(role), now_ms, "+inf")
        follow = iter(await second.execute())
        length = _gauge("tg_gateway_stream_length", ("stream", "partition"))
        per = ("stream", "group", "partition")
        lag = _gauge("tg_gateway_stream_lag", per)
        pending = _gauge("tg_gateway_stream_pending", per)
        oldest = _gauge("tg_gateway_stream_oldest_pending_age_seconds", per)
        totals: dict[str, tuple[int, float]] = {role: (0, 0.0) for role, _, _ in ROLE_STREAMS}
        partition: dict[str, int] = {}
        for n, ((role, kind, group, _), row) in enumerate(zip(plan, ours, strict=True)):
            p = partition[kind] = partition.get(kind, -1) + 1
            length.add_metric([kind, str(p)], int(answers[2 * n]))
            if row is None:
                continue  # no group yet: nothing read, nothing pending
            unread: Any = next(follow)
            entries = row.get("lag")
            if entries is None:
                entries = len(next(follow))
            pending_age = 0.0
            if int(row["pending"]):
                summary: Any = next(follow)
                if summary.get("min") is not None:
                    pending_age = max(0.0, (now_ms - _id_ms(summary["min"])) / 1000)
            unread_age = max(0.0, (now_ms - _id_ms(unread[0][0])) / 1000) if unread else 0.0
            labels = [kind, group, str(p)]
            lag.add_metric(labels, int(entries))
            pending.add_metric(labels, int(row["pending"]))
            oldest.add_metric(labels, pending_age)
            total, age = totals[role]
            totals[role] = (
                total + int(entries) + int(row["pending"]),
                max(age, pending_age, unread_age),
            )
        role_lag = _gauge("tg_gateway_role_lag", ("role",))
        role_age = _gauge("tg_gateway_role_oldest_unacked_age_seconds", ("role",))
        members = _gauge("tg_gateway_role_members", ("role",))
        for role, (total, age) in totals.items():
            role_lag.add_metric([role], total)
            role_age.add_metric([role], age)
            members.add_metric([role], int(next(follow)))
        for kind, answer in zip(("results", "dead"), answers[2 * len(plan) :], strict=True):
            length.add_metric([kind, "0"], int(answer))
        families = [length, lag, pending, oldest, role_lag, role_age, members]
        return [f for f in families if f.name in self.wanted]


def _group_of(groups: Any, group: str) -> dict[str, Any] | None:
    """``group``'s row of an XINFO GROUPS answer (None: no stream, or no such group)."""
    if isinstance(groups, Exception):
        return None
    return next((g for g in groups if _s(g["name"]) == group), None)


class Scrape:
    """One process's ``/metrics`` answer: its registry and, when it has Redis, the gauges."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, metrics: Metrics, token: bytes) -> None:
        self.metrics = metrics
        self.token = token
        self.gauges: StreamGauges | None = None

    def watch(self, redis: aioredis.Redis, keys: Keys) -> None:
        if self.gauges is None:
            self.gauges = StreamGauges(redis, keys, self.metrics)

    def authorized(self, header: bytes | None) -> bool:
        return bearer_ok(header, self.token)

    async def render(self) -> bytes:
        extra = await self.gauges.read() if self.gauges is not None else []
        return self.metrics.exposition(extra)


HEAD_LIMIT = 16 * 1024  # bytes of request line and headers
REQUEST_TIMEOUT = 5.0  # seconds from connect to the end of the answer
MAX_CONNECTIONS = 16


class MetricsServer:
    """``GET /metrics`` with ``Authorization: Bearer <METRICS_TOKEN>`` on its own port;
    everything else 404/405, a bad token 401. Bounded: one request per connection,
    ``REQUEST_TIMEOUT`` for all of it, ``HEAD_LIMIT`` of headers, ``MAX_CONNECTIONS``."""

    def __init__(
        self,
        scrape: Scrape,
        host: str,
        port: int,
        *,
        timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.scrape = scrape
        self.host, self.port = host, port
        self.timeout, self.max_connections = timeout, max_connections
        self._server: asyncio.Server | None = None
        self._open = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=HEAD_LIMIT
        )
        log.info("metrics on http://%s:%d/metrics (bearer token)", self.host, self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > self.max_connections:
                writer.write(_answer(503, b"too many connections"))
                return
            async with asyncio.timeout(self.timeout):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(await respond(self.scrape, head))
                await writer.drain()
        except asyncio.LimitOverrunError:
            writer.write(_answer(431, b"request headers too large"))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()


async def respond(scrape: Scrape, head: bytes) -> bytes:
    """The whole HTTP answer to one request head (pure but for the scrape itself)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _answer(400, b"bad request")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target != b"/metrics":
        return _answer(404, b"not found")
    if method not in (b"GET", b"HEAD"):
        return _answer(405, b"use GET")
    auth = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            auth = value.strip()
    if not scrape.authorized(auth):
        return _answer(401, b"unauthorized", ((b"www-authenticate", b"Bearer"),))
    body = await scrape.render()
    ctype = scrape.content_type.encode()
    answer = _answer(200, body, ctype=ctype)
    return answer if method == b"GET" else answer[: len(answer) - len(body)]


_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found"}
_REASONS |= {405: b"Method Not Allowed", 431: b"Request Header Fields Too Large"}
_REASONS |= {503: b"Service Unavailable"}


def _answer(
    status: int,
    body: bytes,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    ctype: bytes = b"text/plain; charset=utf-8",
) -> bytes:
    head = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error"))]
    head += [b"content-type: " + ctype, b"content-length: %d" % len(body)]
    head += [b"connection: close", *(k + b": " + v for k, v in headers)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def serve_metrics(
    scrape: Scrape | None, host: str, port: int
) -> Callable[[], Awaitable[None]] | None:
    """Start the listener (``None``: metrics off); the coroutine function that stops it."""
    if scrape is None or port == 0:
        return None
    server = MetricsServer(scrape, host, port)
    await server.start()
    return server.aclose
