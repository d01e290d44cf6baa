"""The reference pipeline as an HTTP service (aiohttp): the CRM contract the gateway calls,
with callbacks to ``X-Webhook-URL``, idempotency, and fault injection for tests."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from workers.reference import respond

log = logging.getLogger(__name__)

MODES = ("async", "sync")
_RETRYABLE_4XX = (408, 429)


class Faults:
    """Runtime fault injection: fail the next N message requests, or delay every answer."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.count = 0
        self.delay = 0.0

    def fail_next(self, status: int, count: int = 1) -> None:
        self.status, self.count = status, count

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    def clear(self) -> None:
        self.status, self.count, self.delay = None, 0, 0.0

    def take(self) -> int | None:
        """The status to inject for this request, if any (uses one of the N)."""
        if self.status is None or self.count <= 0:
            return None
        self.count -= 1
        status = self.status
        if self.count == 0:
            self.status = None
        return status

    def state(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.count, "delay": self.delay}


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]


class _BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest(400, "body must be valid JSON") from None
    if not isinstance(body, dict):
        raise _BadRequest(422, "body must be a JSON object")
    for name in ("client_id", "content"):
        if not isinstance(body.get(name), str):
            raise _BadRequest(422, f"'{name}' must be a string")
    if not body["client_id"]:
        raise _BadRequest(422, "'client_id' must not be empty")
    return body


def _check_webhook(url: str | None) -> str:
    if not url:
        raise _BadRequest(400, "X-Webhook-URL header is required")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _BadRequest(400, "X-Webhook-URL must be an absolute http(s) URL")
    return url


class ReferencePipelineServer:
    """``POST /api/messages/`` answered by ``workers.reference.respond``.

    ``mode="async"``: 202 at once, the reply POSTed to ``X-Webhook-URL`` later (with
    retries); ``mode="sync"``: 200 with the reply in the body, no callback.
    """

    def __init__(
        self,
        mode: str = "async",
        delay: float = 0.0,
        *,
        callback_retries: int = 8,  # 0.1 s doubling: ~25 s, more than an ingress restart
        callback_backoff: float = 0.1,
        callback_timeout: float = 10.0,
        shutdown_timeout: float = 1.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.delay = delay
        self.callback_retries = callback_retries
        self.callback_backoff = callback_backoff
        self.callback_timeout = callback_timeout
        self.shutdown_timeout = shutdown_timeout
        self.faults = Faults()
        self.requests: list[dict[str, Any]] = []
        self.arrivals = 0
        self._answers: dict[str, _Answer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/messages/", self._messages)
        app.router.add_post("/api/messages", self._messages)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post("/_ref/faults", self._set_faults)
        app.router.add_delete("/_ref/faults", self._clear_faults)
        app.router.add_get("/_ref/requests", self._list_requests)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); the base URL."""
        if self._runner is not None:
            raise RuntimeError("already started")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.callback_timeout)
        )
        runner = web.AppRunner(
            self.make_app(), handle_signals=False, shutdown_timeout=self.shutdown_timeout
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            await self._session.close()
            self._session = None
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.base_url = f"http://{shown}:{bound_port}"
        log.info("reference pipeline (%s mode) listening on %s", self.mode, self.base_url)
        return self.base_url

    async def stop(self) -> None:
        """Stop serving, cancel pending callbacks and close the callback session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def drain(self) -> None:
        """Wait until every callback scheduled so far has finished (or given up)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- handlers ---------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.Response:
        self.arrivals += 1  # counted on arrival: a caller that times out still shows up
        raw = await request.read()
        pause = self.delay + self.faults.delay
        if pause > 0:
            await asyncio.sleep(pause)
        key = request.headers.get("Idempotency-Key") or None
        webhook = request.headers.get("X-Webhook-URL")
        answer = self._answer(raw, key, webhook)
        try:
            peek = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            peek = None
        fields = peek if isinstance(peek, dict) else {}
        self.requests.append(
            {
                "idempotency_key": key,
                "client_id": fields.get("client_id"),
                "content": fields.get("content"),
                "webhook_url": webhook,
                "status": answer.status,
            }
        )
        return web.json_response(answer.body, status=answer.status)

    def _answer(self, raw: bytes, key: str | None, webhook: str | None) -> _Answer:
        # No awaits in here: the idempotency check-and-store is atomic on the loop.
        injected = self.faults.take()
        if injected is not None:
            log.info("injecting status %d", injected)
            return _Answer(injected, {"detail": "injected"})
        if key is not None and key in self._answers:
            log.info("idempotent replay for key %s", key)
            return self._answers[key]
        try:
            url = _check_webhook(webhook)
            body = _parse_body(raw)
        except _BadRequest as exc:
            return _Answer(exc.status, {"detail": exc.detail})
        message_id = str(uuid.uuid4())
        reply = respond(body["client_id"], body["content"])
        payload = {
            "client_id": body["client_id"],
            "content": reply.content,
            "category": reply.category.value,
            "escalated": reply.escalated,
            "message_id": message_id,
        }
        if self.mode == "sync":
            answer = _Answer(200, payload)
        else:
            answer = _Answer(202, {"status": "accepted", "message_id": message_id})
            task = asyncio.create_task(self._deliver(url, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if key is not None:
            self._answers[key] = answer
        return answer

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        """POST the reply to the callback URL, retrying with doubling backoff."""
        session = self._session
        if session is None:
            return
        backoff = self.callback_backoff
        for attempt in range(self.callback_retries + 1):
            if attempt:
                await asyncio.sleep(backoff)
                backoff *= 2
            try:
                async with session.post(url, json=payload) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("callback to %s failed (attempt %d): %r", url, attempt + 1, exc)
                continue
            if 200 <= status < 300:
                log.info("callback %s delivered to %s", payload["message_id"], url)
                return
            if 400 <= status < 500 and status not in _RETRYABLE_4XX:
                log.error("callback to %s rejected with %d; giving up", url, status)
                return
            log.warning("callback to %s answered %d (attempt %d)", url, status, attempt + 1)
        log.error("callback %s to %s not delivered; giving up", payload["message_id"], url)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            spec = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"detail": "body must be valid JSON"}, status=400)
        if not isinstance(spec, dict):
            return web.json_response({"detail": "body must be a JSON object"}, status=422)
        status, count, delay = spec.get("status"), spec.get("count", 1), spec.get("delay")
        if status is not None:
            if not (isinstance(status, int) and 100 <= status <= 599):
                return web.json_response({"detail": "'status' must be 100-599"}, status=422)
            if not (isinstance(count, int) and count >= 1):
                return web.json_response({"detail": "'count' must be >= 1"}, status=422)
        if delay is not None and not (
            isinstance(delay, int | float) and not isinstance(delay, bool) and delay >= 0
        ):
            return web.json_response({"detail": "'delay' must be >= 0"}, status=422)
        if status is not None:
            self.faults.fail_next(status, count)
        if delay is not None:
            self.faults.set_delay(float(delay))
        return web.json_response(self.faults.state())

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response(self.faults.state())

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)


async def run_reference_pipeline(host: str, port: int, mode: str) -> None:
    """Serve the reference pipeline on ``host:port`` until cancelled."""
    server = ReferencePipelineServer(mode=mode)
    await server.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
