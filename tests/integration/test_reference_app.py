"""Integration tests for ``gateway.testkit.reference.app``: real HTTP on 127.0.0.1, with a small
aiohttp callback receiver standing in for the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.testkit.reference.app import ReferencePipelineServer, run_reference_pipeline
from gateway.testkit.reference.rules import respond
from tests.helpers import env_without_gateway_vars, free_port, wait_for

pytestmark = pytest.mark.integration

DEADLINE = 5.0


async def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail("condition not met before the deadline")
        await asyncio.sleep(0.01)


class Receiver:
    """The gateway's callback endpoint: records bodies, can fail the first N calls."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.hits = 0
        self.fail_first = 0
        self.fail_status = 500
        self.event = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.json_response({"detail": "nope"}, status=self.fail_status)
        self.received.append(await request.json())
        self.event.set()
        return web.json_response({"ok": True})


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/callback", recv.handle)
    app.router.add_post("/callback/{token}", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    recv.url = f"http://{host}:{port}/callback"
    yield recv
    await runner.cleanup()


ServerFactory = Callable[..., Awaitable[ReferencePipelineServer]]


@pytest_asyncio.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[ReferencePipelineServer] = []

    async def factory(**kwargs: Any) -> ReferencePipelineServer:
        kwargs.setdefault("callback_backoff", 0.01)
        server = ReferencePipelineServer(**kwargs)
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def message(content: str = "hello", client_id: str = "telegram_123") -> dict[str, Any]:
    return {"client_id": client_id, "content": content, "timestamp": "2024-01-01T00:00:00Z"}


async def post_message(
    http: aiohttp.ClientSession,
    server: ReferencePipelineServer,
    body: Any,
    webhook: str | None,
    key: str | None = None,
) -> tuple[int, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    if webhook is not None:
        headers["X-Webhook-URL"] = webhook
    data = body if isinstance(body, bytes) else None
    async with http.post(
        f"{server.base_url}/api/messages/",
        json=None if data is not None else body,
        data=data,
        headers={**headers, "Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json()


async def test_healthz(make_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await make_server()
    async with http.get(f"{server.base_url}/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_async_mode_calls_back_with_reply(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    server = await make_server()
    status, body = await post_message(http, server, message("I want a human"), receiver.url)
    assert status == 202
    assert body["status"] == "accepted"
    await asyncio.wait_for(receiver.event.wait(), DEADLINE)
    expected = respond("telegram_123", "I want a human")
    assert receiver.received == [
        {
            "client_id": "telegram_123",
            "content": expected.content,
            "category": "human",
            "escalated": True,
            "message_id": body["message_id"],
        }
    ]


async def test_sync_mode_returns_reply_without_callback(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    server = await make_server(mode="sync")
    status, body = await post_message(http, server, message("thanks!"), receiver.url)
    assert status == 200
    assert body["content"] == respond("telegram_123", "thanks!").content
    assert body["category"] == "thanks"
    assert body["escalated"] is False
    assert body["client_id"] == "telegram_123"
    assert body["message_id"]
    await server.drain()
    assert receiver.hits == 0


async def test_missing_webhook_header_is_400(
    make_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await make_server()
    status, body = await post_message(http, server, message(), None)
    assert status == 400
    assert body == {"detail": "X-Webhook-URL header is required"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 422),
        (b'{"client_id": "telegram_1"}', 422),
        (b'{"client_id": 5, "content": "x"}', 422),
    ],
)
async def test_invalid_bodies_are_rejected(
    make_server: ServerFactory,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    body: bytes,
    status: int,
) -> None:
    server = await make_server()
    got_status, got = await post_message(http, server, body, receiver.url)
    assert got_status == status
    assert isinstance(got["detail"], str)
    assert server.requests[-1]["status"] == status


async def test_idempotent_repeat_calls_back_once(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    server = await make_server()
    first = await post_message(http, server, message("hi"), receiver.url, key="tg-1-100")
    second = await post_message(http, server, message("hi"), receiver.url, key="tg-1-100")
    assert first == second
    assert first[0] == 202
    await asyncio.wait_for(receiver.event.wait(), DEADLINE)
    await server.drain()
    assert len(receiver.received) == 1
    assert receiver.received[0]["message_id"] == first[1]["message_id"]
    third = await post_message(http, server, message("hi"), receiver.url, key="tg-1-101")
    assert third[1]["message_id"] != first[1]["message_id"]


async def test_injected_503_then_recovery(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    server = await make_server(test_endpoints=True)
    async with http.post(f"{server.base_url}/_ref/faults", json={"status": 503, "count": 2}) as r:
        assert r.status == 200
    results = [
        await post_message(http, server, message(), receiver.url, key=f"tg-1-{i}") for i in range(3)
    ]
    assert results[0] == results[1] == (503, {"detail": "injected"})
    assert results[2][0] == 202
    await asyncio.wait_for(receiver.event.wait(), DEADLINE)
    async with http.get(f"{server.base_url}/_ref/requests") as r:
        log = await r.json()
    assert [entry["status"] for entry in log] == [503, 503, 202]
    assert log[0] == {
        "idempotency_key": "tg-1-0",
        "client_id": "telegram_123",
        "content": "hello",
        "metadata": None,
        "webhook_url": receiver.url,
        "status": 503,
    }


async def test_fault_delay_and_clear(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    server = await make_server(mode="sync", shutdown_timeout=0.1, test_endpoints=True)
    async with http.post(f"{server.base_url}/_ref/faults", json={"delay": 5.0}) as r:
        assert r.status == 200
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(post_message(http, server, message(), receiver.url), 0.2)
    async with http.delete(f"{server.base_url}/_ref/faults") as r:
        assert r.status == 200
    assert server.faults.delay == 0.0
    status, _ = await post_message(http, server, message(), receiver.url)
    assert status == 200


async def test_bad_fault_spec_is_422(
    make_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await make_server(test_endpoints=True)
    async with http.post(f"{server.base_url}/_ref/faults", json={"status": 42}) as r:
        assert r.status == 422


async def test_callback_retried_after_500(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.fail_first = 2
    server = await make_server()
    status, body = await post_message(http, server, message("where is my order"), receiver.url)
    assert status == 202
    await asyncio.wait_for(receiver.event.wait(), DEADLINE)
    assert receiver.hits == 3
    assert receiver.received[0]["category"] == "question"
    assert receiver.received[0]["message_id"] == body["message_id"]


async def test_callback_gives_up_on_400(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.fail_first, receiver.fail_status = 1, 400
    server = await make_server()
    await post_message(http, server, message(), receiver.url)
    await wait_until(lambda: receiver.hits >= 1)
    await server.drain()
    assert receiver.hits == 1
    assert receiver.received == []


async def test_callback_retries_are_bounded(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.fail_first = 100
    server = await make_server(callback_backoff=0.001)
    await post_message(http, server, message(), receiver.url)
    await wait_until(lambda: receiver.hits >= 1)
    await server.drain()
    assert receiver.hits == 9  # the first attempt plus 8 retries


async def test_run_reference_pipeline_serves_until_cancelled(
    http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    task = asyncio.create_task(run_reference_pipeline("127.0.0.1", port, "sync"))
    url = f"http://127.0.0.1:{port}/healthz"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        assert not task.done(), "server task ended early"
        with contextlib.suppress(aiohttp.ClientConnectionError):
            async with http.get(url) as resp:
                if resp.status == 200:
                    break
        assert loop.time() < deadline, "server did not come up"
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- closed by default (issue 9, item 4) ------------------------------------------------


class Listener:
    """A TCP server that only counts the connections made to it (a host not allowed)."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def start(self, host: str) -> None:
        self.server = await asyncio.start_server(self._accept, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest_asyncio.fixture
async def other_host() -> AsyncIterator[Listener]:
    """A listener on 127.0.0.2: another host as far as the allow-list is concerned."""
    listener = Listener()
    await listener.start("127.0.0.2")
    yield listener
    await listener.stop()


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/_ref/requests"), ("POST", "/_ref/faults"), ("DELETE", "/_ref/faults")],
)
async def test_test_endpoints_are_404_unless_enabled(
    make_server: ServerFactory, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    closed = await make_server()
    opened = await make_server(test_endpoints=True)
    body = {"delay": 0}
    async with http.request(method, f"{closed.base_url}{path}", json=body) as r:
        assert r.status == 404
    async with http.request(method, f"{opened.base_url}{path}", json=body) as r:
        assert r.status == 200
    assert closed.faults.state() == {"status": None, "count": 0, "delay": 0.0}


async def test_records_and_idempotency_memory_are_bounded(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    n, k = 5, 3
    server = await make_server(mode="sync", max_records=n, test_endpoints=True)
    ids = []
    for i in range(n + k):
        status, body = await post_message(http, server, message(f"m{i}"), receiver.url, f"k{i}")
        assert status == 200
        ids.append(body["message_id"])
    assert [r["content"] for r in server.requests] == [f"m{i}" for i in range(k, n + k)]
    assert server.remembered_keys == n
    async with http.get(f"{server.base_url}/_ref/requests") as r:
        assert len(await r.json()) == n
    # The newest key still replays; the oldest was forgotten (answered anew).
    assert (await post_message(http, server, message("m7"), receiver.url, "k7"))[1][
        "message_id"
    ] == ids[7]
    assert (await post_message(http, server, message("m0"), receiver.url, "k0"))[1][
        "message_id"
    ] != ids[0]
    assert server.remembered_keys == n and len(server.requests) == n


async def test_pending_callbacks_are_bounded(
    make_server: ServerFactory, other_host: Listener, http: aiohttp.ClientSession
) -> None:
    # Callbacks to a host that accepts and hangs up stay pending (retrying) for a while.
    server = await make_server(max_records=2, callback_hosts=["127.0.0.2"], callback_backoff=5)
    url = f"http://127.0.0.2:{other_host.port}/x"
    statuses = [(await post_message(http, server, message(), url))[0] for _ in range(3)]
    assert statuses == [202, 202, 503]


@pytest.mark.parametrize(
    "webhook",
    [
        "http://127.0.0.2:{port}/x",
        "http://example.com/api/delivery/t",
        "http://127.0.0.1.nip.io:{port}/x",
        "http://user@127.0.0.2:{port}/x",
    ],
)
async def test_callback_to_a_host_not_allowed_is_422_and_not_fetched(
    make_server: ServerFactory, other_host: Listener, http: aiohttp.ClientSession, webhook: str
) -> None:
    server = await make_server()  # default: loopback names only
    url = webhook.format(port=other_host.port)
    status, body = await post_message(http, server, message(), url)
    assert status == 422
    assert "not an allowed callback host" in body["detail"]
    await server.drain()
    assert other_host.connections == 0


async def test_an_allowed_host_is_called_back(
    make_server: ServerFactory, other_host: Listener, http: aiohttp.ClientSession
) -> None:
    """The same URL as above, allowed: the listener does see the callback (so the test
    above would notice one)."""
    server = await make_server(callback_hosts=[f"127.0.0.2:{other_host.port}"], callback_retries=0)
    status, _ = await post_message(http, server, message(), f"http://127.0.0.2:{other_host.port}/x")
    assert status == 202
    await server.drain()
    assert other_host.connections == 1
    # Another port of an allowed host:port entry is not allowed.
    status, _ = await post_message(http, server, message(), "http://127.0.0.2:9/x")
    assert status == 422


async def test_a_redirect_is_not_followed(
    make_server: ServerFactory, other_host: Listener, http: aiohttp.ClientSession
) -> None:
    hits = 0

    async def redirect(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        raise web.HTTPFound(f"http://127.0.0.2:{other_host.port}/x")

    app = web.Application()
    app.router.add_post("/cb", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        server = await make_server()
        status, _ = await post_message(http, server, message(), f"http://127.0.0.1:{port}/cb")
        assert status == 202
        await server.drain()
    finally:
        await runner.cleanup()
    assert hits == 1  # a 3xx is not retried either
    assert other_host.connections == 0


async def test_request_body_is_bounded(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    server = await make_server(mode="sync", max_body_bytes=2048)
    big = message("x" * 4096)
    status, body = await post_message(http, server, big, receiver.url)
    assert (status, body) == (413, {"detail": "body larger than 2048 bytes"})
    status, _ = await post_message(http, server, message("x" * 1000), receiver.url)
    assert status == 200


async def test_callback_timeout_bounds_each_attempt(
    make_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/cb", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        server = await make_server(callback_timeout=0.2, callback_retries=1)
        await post_message(http, server, message(), f"http://127.0.0.1:{port}/cb")
        await asyncio.wait_for(server.drain(), 3.0)  # 2 x 0.2 s, not forever
    finally:
        release.set()
        await runner.cleanup()


async def test_no_callback_token_is_logged(
    make_server: ServerFactory,
    other_host: Listener,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "v1.SIGNEDtokenPAYLOAD0123456789.abcdefSIGNATURE"
    hits = 0

    async def delivery(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        status = 500 if hits == 1 else 200  # one failed attempt, then delivered
        return web.json_response({}, status=status)

    app = web.Application()
    app.router.add_post("/api/delivery/{token}", delivery)
    runner = web.AppRunner(app, access_log=None)  # the gateway's side: not under test
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    caplog.set_level(logging.DEBUG)
    try:
        port = runner.addresses[0][1]
        server = await make_server()
        base = f"http://127.0.0.1:{port}/api/delivery/{token}"
        for url in (base, f"http://127.0.0.1:1/api/delivery/{token}", f"{base}?t={token}"):
            await post_message(http, server, message(), url)  # delivered, refused, delivered
        await post_message(http, server, message(), f"http://127.0.0.2:9/api/delivery/{token}")
        await server.drain()
    finally:
        await runner.cleanup()
    assert hits == 3
    text = caplog.text
    assert f"http://127.0.0.1:{port}/api/delivery/…" in text  # something was logged
    assert "http://127.0.0.2:9/api/delivery/…" in text  # the refusal
    assert "delivered" in text and "failed" in text
    assert token not in text and "SIGNED" not in text


class PipelineProcess:
    """``tg-gateway pipeline --port 0`` as deployed; its URL read from its own log line."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str]) -> None:
        self.log_path = tmp / "pipeline.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "pipeline", "--port", "0", *args],
            env={**env_without_gateway_vars(), **env},
            cwd=tmp,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = ""

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def started(self) -> str:
        def listening() -> str | None:
            assert self.proc.poll() is None, self.output()
            found = re.search(r"listening on (http://[^;\s]+)", self.output())
            return found.group(1) if found else None

        self.url = await wait_for(listening, timeout=30, message="the pipeline's listen line")
        return self.url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.mark.parametrize("enable", [None, "flag", "env"])
async def test_process_serves_test_endpoints_only_when_enabled(
    tmp_path: Path, http: aiohttp.ClientSession, enable: str | None
) -> None:
    args = ["--test-endpoints"] if enable == "flag" else []
    env = {"REFERENCE_TEST_ENDPOINTS": "true"} if enable == "env" else {}
    pipe = PipelineProcess(tmp_path, args, env)
    try:
        url = await pipe.started()
        async with http.get(f"{url}/_ref/requests") as r:
            assert r.status == (404 if enable is None else 200)
        async with http.post(f"{url}/_ref/faults", json={"status": 503}) as r:
            assert r.status == (404 if enable is None else 200)
    finally:
        pipe.stop()


async def test_process_calls_back_only_to_the_public_url_host_and_logs_no_token(
    tmp_path: Path, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """Default allow-list: GATEWAY_PUBLIC_URL's host. A receiver on 127.0.0.1 is refused
    when that host is ``ingress``; allowed once REFERENCE_CALLBACK_HOSTS names it."""
    token = "v1.TOKENinTHEpath0123456789.sigSIGsig"
    callback = f"{receiver.url}/{token}"
    env = {"GATEWAY_PUBLIC_URL": "http://ingress:8080", "LOG_LEVEL": "DEBUG"}
    refused = PipelineProcess(tmp_path, [], env)
    try:
        url = await refused.started()
        headers = {"X-Webhook-URL": callback}
        async with http.post(f"{url}/api/messages/", json=message(), headers=headers) as r:
            assert r.status == 422
            assert "127.0.0.1" in (await r.json())["detail"]
    finally:
        refused.stop()
    assert receiver.hits == 0
    allowed = PipelineProcess(
        tmp_path, [], {**env, "REFERENCE_CALLBACK_HOSTS": "ingress, 127.0.0.1"}
    )
    try:
        url = await allowed.started()
        async with http.post(
            f"{url}/api/messages/", json=message(), headers={"X-Webhook-URL": callback}
        ) as r:
            assert r.status == 202
        await wait_for(lambda: "delivered" in allowed.output(), message="the delivery log line")
    finally:
        allowed.stop()
    assert receiver.hits == 1  # the path ends in the token: the receiver routes /callback/*
    text = refused.output() + allowed.output()
    assert "/callback/…" in text
    assert token not in text and "TOKEN" not in text
