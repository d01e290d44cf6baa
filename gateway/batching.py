"""Coalesced Redis calls: commands issued concurrently by many coroutines go out as one
pipeline, so a process handling many chats pays one round trip per batch, not per call.

Each caller awaits the replies to its own commands. A pipeline is sent as soon as the
event loop is free; callers that arrive while one is in flight ride the next. Nothing
waits for a batch to fill, so a lone caller pays no extra latency. Pipelines go one at a
time, in call order: the poller's batch lands in the stream in Telegram's order. (Two
pipelines in flight were tried for the worker, by hand, and were no faster in
bench/workers.py; the variant was not kept.)

Used by the ingress (publish with dedupe), the worker (handed check) and every stream
consumer (finish an entry: its effects and its ack in one script).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from gateway.redis_errors import as_connection_error

Command = Sequence[Any]


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


class Coalescer:
    """One pipeline for every command queued while the previous one was in flight."""

    def __init__(self, redis: aioredis.Redis, timeout: float | None = None) -> None:
        """``timeout``: the longest a caller waits for its replies and the longest one
        pipeline may take (then it is abandoned and its connection dropped), so a hung
        Redis cannot make callers queue behind a stuck pipeline. None: the client's own
        socket timeouts and retries are the only bound."""
        self._redis = redis
        self._timeout = timeout
        self._cluster = isinstance(redis, RedisCluster)
        self._scripts: dict[str, str] = {}  # sha1 -> source, reloaded after a NOSCRIPT
        self._queue: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def script(self, source: str) -> str:
        """Register a Lua script; returns the sha1 to call it with ``EVALSHA``."""
        sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._scripts[sha] = source
        return sha

    async def run(self, *commands: Command) -> list[Any]:
        """The reply to each command, in order; a command Redis refused has its
        ``ResponseError`` in its place. Raises ``RedisError``/``OSError`` when Redis could
        not be reached, ``TimeoutError`` when it did not answer within ``timeout`` (either
        way the commands may or may not have run).

        The commands must not depend on each other: they are sent in order, but a script
        Redis had forgotten (NOSCRIPT) runs again after the rest of the batch ran."""
        fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        item = (commands, fut)
        self._queue.append(item)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        if self._timeout is None:
            return await fut
        try:
            async with asyncio.timeout(self._timeout):
                return await fut
        except TimeoutError:
            raise TimeoutError(f"no answer from Redis within {self._timeout:g}s") from None
        finally:
            if fut.cancelled():
                # Gave up before its pipeline was sent: it is never sent. (Once sent, its
                # commands may still run after the caller gave up: see above.)
                with contextlib.suppress(ValueError):
                    self._queue.remove(item)

    async def aclose(self) -> None:
        """Wait for an in-flight pipeline so no caller is left without an answer."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                flat = [cmd for commands, _ in batch for cmd in commands]
                try:
                    if self._timeout is None:
                        replies = await self._run(flat)
                    else:
                        async with asyncio.timeout(self._timeout):
                            replies = await self._run(flat)
                except Exception as exc:  # every caller gets an answer, whatever failed
                    error = as_connection_error(exc)  # redis-py#4287: a closed connection
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
            for _, fut in batch + self._queue:
                fut.cancel()
            self._queue = []
            raise
        finally:
            # No await since the queue was last seen empty: a caller arriving now starts
            # a new flusher instead of waiting on this finished one.
            self._flusher = None

    async def _run(self, commands: list[Command]) -> list[Any]:
        send = self._cluster_pipeline if self._cluster else self._pipeline_once_more
        replies = await send(commands)
        if any(isinstance(r, NoScriptError) for r in replies):
            # Redis restarted or flushed its script cache (on a cluster SCRIPT LOAD goes
            # to every primary): load once, rerun the refused calls.
            for source in self._scripts.values():
                await self._redis.script_load(source)
            redo = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            again = await send([commands[i] for i in redo])
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

    async def _cluster_pipeline(self, commands: list[Command]) -> list[Any]:
        """redis-py's cluster pipeline: each command goes to its slot's node (a script's
        keys share one hash tag)."""
        pipe = self._redis.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
