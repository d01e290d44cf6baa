"""Redis adapters: connect, create groups, publish updates (coalesced) and outbound entries.

The cluster client is ``gateway.runtime.cluster``; dead letters ``gateway.runtime.dlq``;
retention ``gateway.runtime.retention``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.core.contracts import (
    GROUP_SENDERS,
    GROUP_WORKERS,
    PARK_CAP,
    Keys,
    OutboundEntry,
    update_fields,
)
from gateway.core.errors import RedisUnavailable
from gateway.core.settings import RedisSettings
from gateway.runtime.batching import Coalescer
from gateway.runtime.cluster import GatewayCluster
from gateway.runtime.redis_errors import reraise_cancel
from gateway.runtime.routing import outbound_stream
from gateway.runtime.scripts import PARK_UPDATES, PUBLISH_UPDATE, PUBLISH_UPDATES

Fields = Mapping[Any, Any]
"""An updates entry's fields (``update_fields``; bytes keys when read back from Redis)."""


def fields_arg(fields: Mapping[str, str | bytes]) -> dict[Any, Any]:
    """Entry fields in the shape redis-py's (invariant) ``xadd`` annotation accepts."""
    return dict(fields)


def connect(url: str, max_connections: int = 64, *, cluster: bool = False) -> aioredis.Redis:
    """A client on a bounded pool: callers past ``max_connections`` wait for a connection
    (up to 20 s) instead of failing; bytes in, bytes out (entries carry raw JSON).

    With ``cluster`` (``REDIS_CLUSTER=true``) it is a Redis Cluster client seeded from
    ``url``; ``max_connections`` is then per node. Every key the gateway touches in one
    command or script shares a hash tag, so the same calls work on both (``is_cluster``
    marks the few places that run differently).
    """
    if cluster:
        client = GatewayCluster.from_url(
            url,
            max_connections=max_connections,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            decode_responses=False,
            socket_connect_timeout=2.0,
            socket_timeout=10.0,
        )
        # RedisCluster implements the command API the gateway uses; callers that need
        # more (a pipeline's MULTI, a raw connection) ask is_cluster() first.
        return cast(aioredis.Redis, client)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=20,
        # A connection opened before a Redis restart fails its first command: retry it
        # on a fresh connection instead of failing the caller (503, a pending entry).
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
        socket_connect_timeout=2.0,
        socket_timeout=10.0,
        health_check_interval=15,
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


def connect_with(rs: RedisSettings) -> aioredis.Redis:
    """The client the settings ask for: ``REDIS_URL``, pool size, cluster or not."""
    return connect(rs.redis_url, rs.redis_max_connections, cluster=rs.redis_cluster)


def is_cluster(redis: object) -> bool:
    """Is ``redis`` a Redis Cluster client (no MULTI across slots, no multi-slot reads)?"""
    return isinstance(redis, RedisCluster)


async def ensure_groups(redis: aioredis.Redis, keys: Keys) -> None:
    """Create every stream and group at id 0, so entries published earlier are seen."""
    pairs = [(s, GROUP_WORKERS) for s in keys.all_updates()]
    pairs += [(s, GROUP_SENDERS) for s in keys.all_outbound()]
    for stream, group in pairs:
        try:
            await redis.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def ensure_group(redis: aioredis.Redis, streams: list[str], group: str, start: str) -> None:
    """Create ``group`` on each of ``streams`` (and the stream) at id ``start`` unless it
    exists: an existing group keeps its position."""
    for stream in streams:
        try:
            await redis.xgroup_create(stream, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def groups_present(redis: aioredis.Redis, keys: Keys) -> list[str]:
    """Streams whose consumer group is missing (empty list = ready)."""
    missing: list[str] = []
    wanted = [(s, GROUP_WORKERS) for s in keys.all_updates()]
    wanted += [(s, GROUP_SENDERS) for s in keys.all_outbound()]
    for stream, group in wanted:
        try:
            groups = await redis.xinfo_groups(stream)
        except ResponseError:
            missing.append(stream)
            continue
        names = {
            (g["name"].decode() if isinstance(g["name"], bytes) else g["name"]) for g in groups
        }
        if group not in names:
            missing.append(stream)
    return missing


class UpdatePublisher:
    """Publishes updates with dedupe, coalescing concurrent calls into one pipeline.

    Each caller's coroutine returns only after Redis answered for its own entry, so a
    webhook is acknowledged only once its update is stored; callers that arrive while a
    pipeline is in flight ride the next one (one round trip for many requests).

    The poller publishes with ``publish_entries`` (the same dedupe keys and XADD as
    ``publish``, one atomic call per partition) and parks here (``park``, ``read_parked``,
    ``unpark``): an update whose partition's node cannot take it goes to a parking stream
    (``Keys.parked``) and is published later, by ``publish_entries`` again.
    """

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, dedupe_ttl: int, timeout: float | None = None
    ) -> None:
        """``timeout`` bounds each ``publish`` whatever Redis does (hung, not only down):
        past it the caller gets ``RedisUnavailable``. Its update may still be stored (the
        pipeline was sent); a retry then finds the dedupe key: stored once."""
        self._redis = redis
        self._keys = keys
        self._ttl = str(dedupe_ttl)
        self._timeout = timeout
        self._calls = Coalescer(redis, timeout)
        self._sha = self._calls.script(PUBLISH_UPDATE.source)
        self._many_sha = self._calls.script(PUBLISH_UPDATES.source)
        self._park_sha = self._calls.script(PARK_UPDATES.source)

    @property
    def keys(self) -> Keys:
        return self._keys

    def partition(self, fields: Fields) -> int:
        """The partition of an entry (its ``chat_id`` field, as ``publish`` routes it);
        ``KeyError``/``ValueError`` if it lacks an id ``publish_entries`` needs."""
        bot_id = int(_field(fields, "bot_id"))
        int(_field(fields, "update_id"))
        chat = _field(fields, "chat_id")
        return self._keys.partition(bot_id, int(chat) if chat else None)

    def _publish_command(self, p: int, bot_id: int, update_id: int, fields: Fields) -> list[Any]:
        args: list[Any] = [
            "EVALSHA",
            self._sha,
            2,
            self._keys.dedupe(p, bot_id, update_id),
            self._keys.updates(p),
            self._ttl,
        ]
        for k, v in fields.items():
            args += [k, v]
        return args

    async def publish(
        self,
        *,
        bot_id: int,
        update_id: int,
        chat_id: int | None,
        source: str,
        raw_update: bytes | str,
        received_at: float | None = None,
    ) -> bool:
        """Store one update; True if new, False if a duplicate ``update_id`` (not stored)."""
        p = self._keys.partition(bot_id, chat_id)
        fields = update_fields(
            bot_id=bot_id,
            update_id=update_id,
            chat_id=chat_id,
            source=source,
            raw_update=raw_update,
            received_at=received_at,
        )
        try:
            [res] = await self._calls.run(self._publish_command(p, bot_id, update_id, fields))
        except Exception as exc:  # Redis away, or e.g. a packing error: an answer, not a hang
            reraise_cancel()
            raise RedisUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        if isinstance(res, Exception):
            raise RedisUnavailable(f"redis: {res}")
        # A repeat after a lost connection finds its own dedupe key: reported as a
        # duplicate, which it is (the first run stored it).
        return res is not None and res is not False

    async def publish_entries(self, entries: Sequence[Fields]) -> list[bool | RedisUnavailable]:
        """``publish`` for ready-made entries, each partition's in order and in one atomic
        call (all stored or none), the calls in one pipeline per node. For each entry: True
        (stored), False (a duplicate: stored before) or the ``RedisUnavailable``.
        ``KeyError``/``ValueError`` for an entry without its ids (see ``partition``)."""
        by_partition: dict[int, list[int]] = {}
        for i, f in enumerate(entries):
            by_partition.setdefault(self.partition(f), []).append(i)
        commands: list[list[Any]] = []
        for p, where in by_partition.items():
            dedupe = [
                self._keys.dedupe(
                    p, int(_field(entries[i], "bot_id")), int(_field(entries[i], "update_id"))
                )
                for i in where
            ]
            command = ["EVALSHA", self._many_sha, 1 + len(where), self._keys.updates(p), *dedupe]
            command.append(self._ttl)
            for i in where:
                command += _counted(entries[i])
            commands.append(command)
        results: list[bool | RedisUnavailable] = [False] * len(entries)
        if not commands:
            return results
        try:
            replies = await self._calls.run(*commands)
        except Exception as exc:
            reraise_cancel()
            return [RedisUnavailable(f"redis: {type(exc).__name__}: {exc}")] * len(entries)
        for where, reply in zip(by_partition.values(), replies, strict=True):
            for n, i in enumerate(where):
                results[i] = (
                    RedisUnavailable(f"redis: {reply}")
                    if isinstance(reply, Exception)
                    else bool(reply[n])
                )
        return results

    async def park(self, key: str, entries: Sequence[Fields]) -> str | None:
        """Append ``entries`` to the parking stream ``key``, in order: all or none (none
        if that would take it past ``PARK_CAP``). None if parked, else why not."""
        command: list[Any] = ["EVALSHA", self._park_sha, 1, key, str(PARK_CAP), len(entries)]
        for f in entries:
            command += _counted(f)
        try:
            [reply] = await self._calls.run(command)
        except Exception as exc:
            reraise_cancel()
            return f"redis: {type(exc).__name__}: {exc}"
        return f"redis: {reply}" if isinstance(reply, Exception) else None

    async def read_parked(
        self, key: str, start: str, count: int
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        """Up to ``count`` entries of a parking stream from ``start`` (an XRANGE bound)."""
        try:
            async with asyncio.timeout(self._timeout):
                rows: Any = await self._redis.xrange(key, min=start, count=count)
        except Exception as exc:  # as ``publish``: its node away, whatever redis-py raises
            reraise_cancel()  # a cancel that raced the timeout: not an unavailable node
            raise RedisUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return [(i.decode() if isinstance(i, bytes) else str(i), f) for i, f in rows]

    async def unpark(self, key: str, ids: Sequence[str]) -> None:
        """Delete moved entries from a parking stream."""
        if not ids:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.xdel(key, *ids)
        except Exception as exc:
            reraise_cancel()
            raise RedisUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def count_parked(self, n: int) -> None:
        """Add to the ``parked_updates`` counter; best effort (its node may be the one away)."""
        with contextlib.suppress(Exception):
            await self._calls.run(("INCRBY", self._keys.counter("parked_updates"), n))

    def parking_places(self, p: int) -> list[str]:
        """Parking streams to try for partition ``p``, one per node: other nodes than the
        partition's first, starting at ``p``'s own rotation (partitions spread over them),
        the partition's own node last. On a single Redis: one stream."""
        streams = self._keys.all_parked()
        home = self._node_of(self._keys.updates(p))
        seen: set[str | None] = set()
        elsewhere: list[str] = []
        same: list[str] = []
        for i in range(len(streams)):
            key = streams[(p + i) % len(streams)]
            node = self._node_of(key)
            if node in seen:
                continue
            seen.add(node)
            (same if node == home else elsewhere).append(key)
        return elsewhere + same

    def _node_of(self, key: str) -> str | None:
        """The cluster node serving ``key`` in the client's slot map; None on a single
        Redis (or a slot map not learned yet)."""
        if not is_cluster(self._redis):
            return None
        cluster: Any = self._redis
        try:
            return str(cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key)).name)
        except Exception:
            return None

    async def aclose(self) -> None:
        """Wait for an in-flight pipeline so no caller is left without an answer."""
        await self._calls.aclose()


def _counted(fields: Fields) -> list[Any]:
    """An entry's field/value arguments, preceded by their number (the scripts above)."""
    args: list[Any] = [2 * len(fields)]
    for k, v in fields.items():
        args += [k, v]
    return args


def _field(fields: Fields, name: str) -> str:
    value = fields.get(name, fields.get(name.encode()))
    if value is None:
        raise KeyError(name)
    return value.decode() if isinstance(value, bytes) else str(value)


async def publish_outbound(
    redis: aioredis.Redis,
    keys: Keys,
    entries: Iterable[OutboundEntry],
    marks: Sequence[tuple[str, int]] = (),
) -> list[str]:
    """XADD outbound entries to their chat's partition (one pipeline); returns entry ids.
    ``marks`` (key, ttl seconds): keys set to ``1`` first, in the same pipeline (the
    delivery endpoint's "replied" mark, in the chat's tag: before its replies).

    On a cluster the XADDs go out per node (``Coalescer``): a node that is down fails
    these entries only, and redis-py's cluster pipeline, which on a connection error
    closes the client's connections to every node, is not used."""
    entries = list(entries)
    if not entries:
        return []
    skip = len(marks)
    if is_cluster(redis):
        commands: list[tuple[Any, ...]] = [("SET", key, "1", "EX", ttl) for key, ttl in marks]
        commands += [
            (
                "XADD",
                outbound_stream(keys, e),
                "*",
                *(x for kv in e.to_fields().items() for x in kv),
            )
            for e in entries
        ]
        try:
            replies = await Coalescer(redis).run(*commands)
        except (RedisError, OSError) as exc:  # OSError: TimeoutError too
            reraise_cancel()
            raise RedisUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        for reply in replies:
            if isinstance(reply, Exception):
                raise RedisUnavailable(f"redis: {reply}")
        return [i.decode() if isinstance(i, bytes) else str(i) for i in replies[skip:]]
    pipe = redis.pipeline(transaction=False)
    for key, ttl in marks:
        pipe.set(key, "1", ex=ttl)
    for entry in entries:
        stream = outbound_stream(keys, entry)
        pipe.xadd(stream, fields_arg(entry.to_fields()))
    try:
        ids = await pipe.execute()
    except (RedisError, OSError) as exc:
        reraise_cancel()
        raise RedisUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids[skip:]]
