"""Integration tests for ``workers.reference_app``: real HTTP on 127.0.0.1, with a small
aiohttp callback receiver standing in for the gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.helpers import free_port
from workers.reference import respond
from workers.reference_app import ReferencePipelineServer, run_reference_pipeline

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
    server = await make_server()
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
        "webhook_url": receiver.url,
        "status": 503,
    }


async def test_fault_delay_and_clear(
    make_server: ServerFactory, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    server = await make_server(mode="sync", shutdown_timeout=0.1)
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
    server = await make_server()
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
