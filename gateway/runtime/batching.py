"""Coalesced Redis calls: commands issued concurrently by many coroutines go out as one
pipeline, so a process handling many chats pays one round trip per batch, not per call.

Each caller awaits the replies to its own commands. A pipeline is sent as soon as the
event loop is free; callers that arrive while one is in flight ride the next. Nothing
waits for a batch to fill, so a lone caller pays no extra latency. Pipelines go one at a
time, in call order: the poller's batch lands in the stream in Telegram's order. (Two
pipelines in flight were tried for the worker, by hand, and were no faster in
bench/workers.py; the variant was not kept.)

On a Redis Cluster every node has its own queue and its own pipeline in flight: a
command goes to the node owning its key's slot, the nodes' pipelines run concurrently,
and a node that is down or hung fails (or delays) only the callers with a command on
it. One slot's commands still go one pipeline at a time, in call order.

Used by the ingress (publish with dedupe), the worker (handed check), every stream
consumer (finish an entry: its effects and its ack in one script) and the partition
leases (heartbeat, renewals).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.runtime.redis_errors import as_connection_error

log = logging.getLogger(__name__)

Command = Sequence[Any]
_Item = tuple[Sequence[Command], "asyncio.Future[list[Any]]"]

SCRIPT_COMMANDS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
REFRESH_EVERY = 1.0
"""Seconds between two slot-map refreshes started by failing nodes (a failover moves
the failed primary's slots to a replica at another address)."""


@contextlib.asynccontextmanager
async def pooled_connection(redis: aioredis.Redis) -> AsyncIterator[Connection]:
    """A connection of ``redis``'s pool, used directly: no client-side retry re-sends a
    command on it. Disconnected on any failure, so a half-read one never goes back.

    A connection closed under a command makes redis-py 8.1 raise AttributeError/TypeError
    (redis/redis-py#4287); it comes out of here as the ``ConnectionError`` it is."""
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        yield conn
    except BaseException as exc:
        await conn.disconnect()
        error = as_connection_error(exc)
        if error is not exc:
            raise error from exc
        raise
    finally:
        await pool.release(conn)


def command_key(cmd: Command) -> Any:
    """The key that routes ``cmd`` on a cluster: a script's first key, else the command's
    first argument (every command the gateway coalesces names its key first); None for
    a command without one."""
    name = str(cmd[0].decode() if isinstance(cmd[0], bytes) else cmd[0]).upper()
    if name in SCRIPT_COMMANDS:
        return cmd[3] if len(cmd) > 3 and int(cmd[2]) > 0 else None
    return cmd[1] if len(cmd) > 1 else None


@dataclass(eq=False)
class _Queue:
    """The commands waiting for one destination (the server, or one cluster node)."""

    node: ClusterNode | None
    items: list[_Item] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None


class Coalescer:
    """One pipeline per destination for every command queued while the previous one was
    in flight."""

    def __init__(self, redis: aioredis.Redis, timeout: float | None = None) -> None:
        """``timeout``: the longest a caller waits for its replies and the longest one
        pipeline may take (then it is abandoned and its connection dropped), so a hung
        Redis cannot make callers queue behind a stuck pipeline. None: the client's own
        socket timeouts and retries are the only bound."""
        self._redis = redis
        self._timeout = timeout
        self._cluster = isinstance(redis, RedisCluster)
        self._scripts: dict[str, str] = {}  # sha1 -> source, reloaded after a NOSCRIPT
        self._queues: dict[str | None, _Queue] = {}  # node name (None: not a cluster)
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed = 0.0

    def script(self, source: str) -> str:
        """Register a Lua script; returns the sha1 to call it with ``EVALSHA``."""
        sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._scripts[sha] = source
        return sha

    async def run(self, *commands: Command) -> list[Any]:
        """The reply to each command, in order; a command Redis refused has its
        ``ResponseError`` in its place. Raises ``RedisError``/``OSError`` when Redis (on a
        cluster: a node one of the commands goes to) could not be reached, ``TimeoutError``
        when it did not answer within ``timeout`` (either way the commands may or may not
        have run).

        The commands must not depend on each other: they are sent in order, but a script
        Redis had forgotten (NOSCRIPT) runs again after the rest of the batch ran, and on
        a cluster commands for different nodes go out independently."""
        loop = asyncio.get_running_loop()
        if self._cluster and not self._redis.nodes_manager.slots_cache:  # type: ignore[attr-defined]
            await self._redis.initialize()  # a new client: learn the slot map first
        placed: list[tuple[_Queue, _Item, list[int]]] = []
        for name, node, where in self._route(commands):
            queue = self._queues.get(name)
            if queue is None:
                queue = self._queues[name] = _Queue(node)
            queue.node = node  # the slot map's current object for that address
            item: _Item = ([commands[i] for i in where], loop.create_future())
            queue.items.append(item)
            if queue.flusher is None:
                queue.flusher = asyncio.create_task(self._flush(queue))
            placed.append((queue, item, where))
        try:
            async with asyncio.timeout(self._timeout):
                parts = await asyncio.gather(*(item[1] for _, item, _ in placed))
        except TimeoutError:
            raise TimeoutError(f"no answer from Redis within {self._timeout:g}s") from None
        finally:
            for queue, item, _ in placed:
                if not item[1].done():
                    item[1].cancel()  # another node failed first, or the caller gave up
                if item[1].cancelled():
                    # Given up before its pipeline was sent: it is never sent. (Once sent,
                    # its commands may still run after the caller gave up: see above.)
                    with contextlib.suppress(ValueError):
                        queue.items.remove(item)
        replies: list[Any] = [None] * len(commands)
        for (_, _, where), part in zip(placed, parts, strict=True):
            for i, reply in zip(where, part, strict=True):
                replies[i] = reply
        return replies

    def _route(self, commands: Sequence[Command]) -> list[tuple[str | None, Any, list[int]]]:
        """(queue name, node, indexes of ``commands``) per destination."""
        if not self._cluster:
            return [(None, None, list(range(len(commands))))]
        cluster: Any = self._redis
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, cmd in enumerate(commands):
            key = command_key(cmd)
            if key is None:
                node = cluster.get_default_node()
            else:
                node = cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key))
            by_node.setdefault(node.name, (node, []))[1].append(i)
        return [(name, node, where) for name, (node, where) in by_node.items()]

    async def aclose(self) -> None:
        """Wait for in-flight pipelines so no caller is left without an answer."""
        flushers = [q.flusher for q in self._queues.values() if q.flusher is not None]
        if flushers:
            await asyncio.shield(asyncio.gather(*flushers, return_exceptions=True))
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)

    async def _flush(self, queue: _Queue) -> None:
        batch: list[_Item] = []
        try:
            while queue.items:
                batch, queue.items = queue.items, []
                flat = [cmd for commands, _ in batch for cmd in commands]
                try:
                    async with asyncio.timeout(self._timeout):
                        replies = await self._run(queue.node, flat)
                except Exception as exc:  # every caller gets an answer, whatever failed
                    error = as_connection_error(exc)  # redis-py#4287: a closed connection
                    if queue.node is not None:
                        self._refresh_slots_soon()
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(error)
                    continue
                at = 0
                for commands, fut in batch:
                    if not fut.done():  # a caller cancelled meanwhile
                        fut.set_result(replies[at : at + len(commands)])
                    at += len(commands)
                batch = []
        except BaseException:
            # Cancelled (shutdown): nobody waits forever on a pipeline that never ran.
            for _, fut in batch + queue.items:
                fut.cancel()
            queue.items = []
            raise
        finally:
            # No await since the queue was last seen empty: a caller arriving now starts
            # a new flusher instead of waiting on this finished one.
            queue.flusher = None

    async def _run(self, node: ClusterNode | None, commands: list[Command]) -> list[Any]:
        if node is not None:
            return await self._run_on_node(node, commands)
        replies = await self._pipeline_once_more(commands)
        if any(isinstance(r, NoScriptError) for r in replies):
            # Redis restarted or flushed its script cache: load once, rerun the refused.
            for source in self._scripts.values():
                await self._redis.script_load(source)
            redo = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            again = await self._pipeline_once_more([commands[i] for i in redo])
            for i, r in zip(redo, again, strict=True):
                replies[i] = r
        return replies

    async def _pipeline_once_more(self, commands: list[Command]) -> list[Any]:
        try:
            return await self._pipeline(commands)
        except (RedisConnectionError, OSError):
            # Once more, on a fresh connection (a pooled one may predate a Redis restart).
            # Callers' commands are idempotent or their repeat is harmless (see callers).
            return await self._pipeline(commands)

    async def _pipeline(self, commands: list[Command]) -> list[Any]:
        """One write of every command, packed by hiredis; one read per command.

        redis-py's pipeline packs commands in pure Python: about 20% of the ingress CPU
        under load (bench/, docs/bench-ingress.md).
        """
        payload = b"".join(hiredis.pack_command(tuple(cmd)) for cmd in commands)
        async with pooled_connection(self._redis) as conn:
            await conn.send_packed_command(payload)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies

    async def _run_on_node(self, node: ClusterNode, commands: list[Command]) -> list[Any]:
        """One node's pipeline. That node alone: its scripts are reloaded on it after a
        NOSCRIPT (a restarted node forgot them), and a command whose slot moved (MOVED,
        ASK, TRYAGAIN: a failover, a resharding) goes once more through the cluster
        client, which follows the redirection and updates its slot map."""
        replies = await self._node_pipeline(node, commands)
        if any(isinstance(r, NoScriptError) for r in replies):
            await self._node_pipeline(node, [("SCRIPT", "LOAD", s) for s in self._scripts.values()])
            redo = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            again = await self._node_pipeline(node, [commands[i] for i in redo])
            for i, r in zip(redo, again, strict=True):
                replies[i] = r
        for i, reply in enumerate(replies):
            if isinstance(reply, MovedError | AskError | TryAgainError):
                try:
                    replies[i] = await self._redis.execute_command(*commands[i])  # type: ignore[no-untyped-call]
                except RedisError as exc:  # its caller's alone, like a refusal
                    replies[i] = exc
        return replies

    @staticmethod
    async def _node_pipeline(node: ClusterNode, commands: list[Command]) -> list[Any]:
        """redis-py's per-node pipeline (its reply callbacks, as the cluster client's
        own); a reply lost to the connection fails the whole batch: the node is away."""
        stack = [PipelineCommand(i, *cmd) for i, cmd in enumerate(commands)]
        await node.execute_pipeline(stack)
        for cmd in stack:
            if isinstance(cmd.result, Exception) and not isinstance(cmd.result, ResponseError):
                raise cmd.result
        return [cmd.result for cmd in stack]

    def _refresh_slots_soon(self) -> None:
        """A node failed: reload the slot map in the background (at most once a second),
        so commands follow a failover; callers never wait for it."""
        if self._refresh is not None or time.monotonic() - self._refreshed < REFRESH_EVERY:
            return
        self._refreshed = time.monotonic()
        self._refresh = asyncio.create_task(self._refresh_slots())

    async def _refresh_slots(self) -> None:
        try:
            cluster: Any = self._redis
            await cluster.nodes_manager.initialize()
        except Exception as exc:  # the old map stays; the next failure tries again
            log.info("redis cluster: slot map refresh failed (%s)", exc)
        finally:
            self._refresh = None
