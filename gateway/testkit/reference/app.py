"""The reference pipeline as an HTTP service (aiohttp): the CRM contract the gateway calls,
with callbacks to ``X-Webhook-URL``, idempotency, and fault injection for tests.

Closed by default, as docker-compose deploys it: the test endpoints (``/_ref/*``) exist
only when enabled, callbacks go only to allowed hosts (never following a redirect), what
it remembers is bounded, and a callback URL (it carries a signed token) is logged only as
host and path prefix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from gateway.core.signing import SigningKeys
from gateway.testkit.reference.faults import Faults
from gateway.testkit.reference.policy import (
    BadRequest,
    callback_allow_list,
    check_webhook,
    parse_body,
    redact_url,
)
from gateway.testkit.reference.rules import respond
from gateway.testkit.reference.stream import streamed_bodies

log = logging.getLogger(__name__)

MODES = ("async", "sync")
_RETRYABLE_4XX = (408, 429)
DEFAULT_MAX_RECORDS = 10_000
DEFAULT_MAX_BODY_BYTES = 1_048_576


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: dict[str, Any]


class ReferencePipelineServer:
    """``POST /api/messages/`` answered by ``gateway.testkit.reference.rules.respond``.

    ``mode="async"``: 202 at once, the reply POSTed to ``X-Webhook-URL`` later (with
    retries); ``mode="sync"``: 200 with the reply in the body, no callback. An event
    (``metadata.event``) or a deep link (``metadata.start_param``) is taken (202) and not
    answered, as docs/crm-integration.md suggests: the user wrote nothing, or was greeted.

    ``test_endpoints``: serve ``/_ref/requests`` and ``/_ref/faults`` (tests only: they
    show every user's text and let anyone inject faults). ``callback_hosts``: the hosts an
    ``X-Webhook-URL`` may name (``callback_allow_list``; default loopback); any other is
    422, not fetched. ``max_records`` bounds each of: the recorded requests (oldest
    dropped), the idempotency keys remembered (least recently used dropped) and the
    callbacks pending (beyond it: 503). ``max_body_bytes``: larger requests get 413.
    ``callback_signing_keys``: sign each callback per Standard Webhooks (``webhook-id``:
    the reply's ``message_id``, the same on every retry), as the gateway expects when its
    ``CALLBACK_SIGNING_KEYS`` is set. ``stream``: seconds between a reply's drafts (async
    mode; 0: no drafts): the reply is streamed as an LLM pipeline would (``stream.py``),
    each draft posted once, then the final with its ``reply_key``.
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
        test_endpoints: bool = False,
        callback_hosts: Iterable[str] = (),
        public_url: str | None = None,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        callback_signing_keys: SigningKeys | None = None,
        stream: float = 0.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        self.mode = mode
        self.delay = delay
        self.callback_retries = callback_retries
        self.callback_backoff = callback_backoff
        self.callback_timeout = callback_timeout
        self.shutdown_timeout = shutdown_timeout
        self.test_endpoints = test_endpoints
        self.allowed_hosts = callback_allow_list(callback_hosts, public_url)
        self.max_records = max_records
        self.max_body_bytes = max_body_bytes
        self.callback_keys = callback_signing_keys or SigningKeys()
        self.stream = stream
        self.faults = Faults()
        self._requests: deque[dict[str, Any]] = deque(maxlen=max_records)
        self._timings: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.arrivals = 0
        self._answers: OrderedDict[str, _Answer] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The recorded requests, oldest first (the last ``max_records``)."""
        return list(self._requests)

    @property
    def timings(self) -> list[dict[str, Any]]:
        """When each recorded request arrived and when its answer left (epoch seconds:
        ``received_at``, ``answered_at``; async mode: the callback task started), by
        ``idempotency_key``: the pipeline's share of a reply's latency (``tg-gateway load``)."""
        return list(self._timings)

    @property
    def remembered_keys(self) -> int:
        """How many idempotency keys are remembered now."""
        return len(self._answers)

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post("/api/messages/", self._messages)
        app.router.add_post("/api/messages", self._messages)
        app.router.add_get("/healthz", self._healthz)
        if self.test_endpoints:
            app.router.add_post("/_ref/faults", self._set_faults)
            app.router.add_delete("/_ref/faults", self._clear_faults)
            app.router.add_get("/_ref/requests", self._list_requests)
            app.router.add_get("/_ref/timings", self._list_timings)
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
        log.info(
            "reference pipeline (%s mode) listening on %s; callbacks to %s; test endpoints %s",
            self.mode,
            self.base_url,
            ", ".join(sorted(h if p is None else f"{h}:{p}" for h, p in self.allowed_hosts)),
            "ON" if self.test_endpoints else "off",
        )
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
        received_at = time.time()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            detail = f"body larger than {self.max_body_bytes} bytes"
            return web.json_response({"detail": detail}, status=413)
        pause = self.delay + self.faults.delay
        if pause > 0:
            await asyncio.sleep(pause)
        key = request.headers.get("Idempotency-Key") or None
        webhook = request.headers.get("X-Webhook-URL")
        answer = self._answer(raw, key, webhook)
        self._timings.append(
            {"idempotency_key": key, "received_at": received_at, "answered_at": time.time()}
        )
        try:
            peek = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            peek = None
        fields = peek if isinstance(peek, dict) else {}
        self._requests.append(
            {
                "idempotency_key": key,
                "client_id": fields.get("client_id"),
                "content": fields.get("content"),
                "metadata": fields.get("metadata"),
                "webhook_url": webhook,  # served by /_ref/requests (tests) only, never logged
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
            self._answers.move_to_end(key)
            return self._answers[key]
        try:
            url = check_webhook(webhook, self.allowed_hosts)
            body = parse_body(raw)
        except BadRequest as exc:
            if exc.status == 422 and webhook:
                log.warning("refused callback URL %s: %s", redact_url(webhook), exc.detail)
            return _Answer(exc.status, {"detail": exc.detail})
        answer = self._reply(body, url)
        if key is not None and answer.status < 500:  # a 503 is asked again, not replayed
            self._answers[key] = answer
            while len(self._answers) > self.max_records:
                self._answers.popitem(last=False)
        return answer

    def _reply(self, body: dict[str, Any], url: str) -> _Answer:
        """The answer to a request taken: the reply (in the body, or on the callback)."""
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and ("event" in metadata or "start_param" in metadata):
            return _Answer(202, {"status": "accepted"})  # noted; nothing to reply
        if self.mode == "async" and len(self._tasks) >= self.max_records:
            return _Answer(503, {"detail": "too many callbacks pending; retry later"})
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
        return answer

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        """POST the reply to the callback URL, retrying with doubling backoff; streamed
        (``stream``): its drafts first, each posted once, ``stream`` seconds apart."""
        if self.stream > 0:
            *drafts, payload = streamed_bodies(payload, payload["message_id"])
            for i, draft in enumerate(drafts):
                await self._post(url, draft, f"{payload['message_id']}-d{i}", retries=0)
                await asyncio.sleep(self.stream)
        await self._post(url, payload, payload["message_id"], self.callback_retries)

    async def _post(self, url: str, payload: dict[str, Any], msg_id: str, retries: int) -> None:
        session = self._session
        if session is None:
            return
        shown = redact_url(url)  # the URL carries a signed token: never logged whole
        data = json.dumps(payload).encode()
        backoff = self.callback_backoff
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(backoff)
                backoff *= 2
            headers = {"Content-Type": "application/json"}
            headers.update(self.callback_keys.headers(msg_id, int(time.time()), data))
            try:
                # No redirects: a 3xx must not carry the reply to a host not allowed.
                post = session.post(url, data=data, headers=headers, allow_redirects=False)
                async with post as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The class only: some aiohttp errors quote the whole URL.
                log.warning(
                    "callback to %s failed (attempt %d): %s",
                    shown,
                    attempt + 1,
                    type(exc).__name__,
                )
                continue
            if 200 <= status < 300:
                log.info("callback %s delivered to %s", msg_id, shown)
                return
            if 300 <= status < 500 and status not in _RETRYABLE_4XX:
                log.error("callback to %s rejected with %d; giving up", shown, status)
                return
            log.warning("callback to %s answered %d (attempt %d)", shown, status, attempt + 1)
        log.error("callback %s to %s not delivered; giving up", msg_id, shown)

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

    async def _list_timings(self, request: web.Request) -> web.Response:
        return web.json_response(self.timings)


async def run_reference_pipeline(host: str, port: int, mode: str, **options: Any) -> None:
    """Serve the reference pipeline on ``host:port`` until cancelled (``options``: those of
    ``ReferencePipelineServer``)."""
    server = ReferencePipelineServer(mode=mode, **options)
    await server.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
