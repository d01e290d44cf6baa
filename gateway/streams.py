"""Redis adapters: connect, create groups, publish updates (coalesced), outbound, dead letters."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.batching import Coalescer
from gateway.contracts import (
    GROUP_SENDERS,
    GROUP_WORKERS,
    Keys,
    OutboundEntry,
    Reason,
    Stage,
    dead_fields,
    partition_for,
    update_fields,
)
from gateway.errors import RedisUnavailable
from gateway.settings import RedisSettings

log = logging.getLogger(__name__)

# KEYS[1] dedupe key, KEYS[2] stream; ARGV[1] ttl seconds, ARGV[2..] field/value pairs.
# The dedupe key and the entry appear together or not at all.
PUBLISH_UPDATE_LUA = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
end
return false
"""


def fields_arg(fields: Mapping[str, str | bytes]) -> dict[Any, Any]:
    """Entry fields in the shape redis-py's (invariant) ``xadd`` annotation accepts."""
    return dict(fields)


_in_command: contextvars.ContextVar[bool] = contextvars.ContextVar("_in_command", default=False)


class GatewayCluster(RedisCluster):
    """redis-py's cluster client, except that a CLUSTERDOWN (or an uncovered slot) from
    one node does not close the connections to every node: redis-py 8.1 calls
    ``aclose()`` there, which also cuts the commands in flight on the healthy nodes (a
    node rejoining after a restart answers CLUSTERDOWN for a while). Here that only asks
    for a fresh slot map before the next command; ``aclose()`` from outside still
    closes the client."""

    async def _execute_command(self, target_node: Any, *args: Any, **kwargs: Any) -> Any:
        token = _in_command.set(True)
        try:
            return await super()._execute_command(target_node, *args, **kwargs)
        finally:
            _in_command.reset(token)

    async def aclose(self) -> None:
        if _in_command.get():
            self._initialize = True
            return
        await super().aclose()


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
    """

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, dedupe_ttl: int, timeout: float | None = None
    ) -> None:
        """``timeout`` bounds each ``publish`` whatever Redis does (hung, not only down):
        past it the caller gets ``RedisUnavailable``. Its update may still be stored (the
        pipeline was sent); a retry then finds the dedupe key: stored once."""
        self._keys = keys
        self._ttl = str(dedupe_ttl)
        self._calls = Coalescer(redis, timeout)
        self._sha = self._calls.script(PUBLISH_UPDATE_LUA)

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
        p = partition_for(chat_id, self._keys.partitions)
        fields = update_fields(
            bot_id=bot_id,
            update_id=update_id,
            chat_id=chat_id,
            source=source,
            raw_update=raw_update,
            received_at=received_at,
        )
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
        try:
            [res] = await self._calls.run(args)
        except Exception as exc:  # Redis away, or e.g. a packing error: an answer, not a hang
            raise RedisUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        if isinstance(res, Exception):
            raise RedisUnavailable(f"redis: {res}")
        # A repeat after a lost connection finds its own dedupe key: reported as a
        # duplicate, which it is (the first run stored it).
        return res is not None and res is not False

    async def aclose(self) -> None:
        """Wait for an in-flight pipeline so no caller is left without an answer."""
        await self._calls.aclose()


async def publish_outbound(
    redis: aioredis.Redis, keys: Keys, entries: Iterable[OutboundEntry]
) -> list[str]:
    """XADD outbound entries to their chat's partition (one pipeline); returns entry ids.

    On a cluster the XADDs go out per node (``Coalescer``): a node that is down fails
    these entries only, and redis-py's cluster pipeline, which on a connection error
    closes the client's connections to every node, is not used."""
    if is_cluster(redis):
        commands = [
            (
                "XADD",
                keys.outbound(partition_for(e.chat_id, keys.partitions)),
                "*",
                *(x for kv in e.to_fields().items() for x in kv),
            )
            for e in entries
        ]
        if not commands:
            return []
        try:
            replies = await Coalescer(redis).run(*commands)
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        for reply in replies:
            if isinstance(reply, Exception):
                raise RedisUnavailable(f"redis: {reply}")
        return [i.decode() if isinstance(i, bytes) else str(i) for i in replies]
    pipe = redis.pipeline(transaction=False)
    count = 0
    for entry in entries:
        stream = keys.outbound(partition_for(entry.chat_id, keys.partitions))
        pipe.xadd(stream, fields_arg(entry.to_fields()))
        count += 1
    if not count:
        return []
    try:
        ids = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


async def dead_letter_and_ack(
    redis: aioredis.Redis,
    keys: Keys,
    *,
    group: str,
    stage: Stage,
    reason: Reason,
    stream: str,
    entry_id: str,
    entry: dict[str, str],
    attempts: int,
    error: str,
) -> None:
    """Move an entry to the dead-letter stream and acknowledge it, in one MULTI.

    On a Redis Cluster the dead stream and the entry's partition are different slots: the
    XADD goes first, then the XACK, so a crash in between leaves the entry pending and it
    is dead-lettered again (a duplicate dead letter, never a lost one)."""
    dead = fields_arg(
        dead_fields(
            stage=stage,
            reason=reason,
            stream=stream,
            entry_id=entry_id,
            entry=entry,
            attempts=attempts,
            error=error,
        )
    )
    if is_cluster(redis):
        await redis.xadd(keys.dead, dead)
        await redis.xack(stream, group, entry_id)
    else:
        pipe = redis.pipeline(transaction=True)
        pipe.xadd(keys.dead, dead)
        pipe.xack(stream, group, entry_id)
        await pipe.execute()
    log.warning(
        "dead-lettered %s %s from %s: %s (%s)",
        stage.value,
        entry_id,
        stream,
        reason.value,
        error[:200],
    )


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def safe_trim_id(redis: aioredis.Redis, stream: str, retention_s: float) -> str | None:
    """The MINID below which every entry is older than ``retention_s`` **and** delivered to
    and acknowledged by every consumer group of ``stream``; None if nothing may go.

    Unread entries (after a group's last-delivered id) and pending ones (in a group's PEL)
    are never below it, so trimming to it never loses work (MAXLEN ~ can).
    """
    now_ms = int(time.time() * 1000)
    bound = (now_ms - int(retention_s * 1000), 0)
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return None
    for group in groups:
        name = group["name"]
        last = _id_tuple(group["last-delivered-id"])
        bound = min(bound, (last[0], last[1] + 1))  # everything after it is unread
        if int(group["pending"]):
            summary: Any = await redis.xpending(stream, name)
            oldest = summary.get("min")
            if oldest:
                bound = min(bound, _id_tuple(oldest))
    if bound <= (0, 0):
        return None
    return f"{bound[0]}-{bound[1]}"


async def trim_stream(
    redis: aioredis.Redis,
    stream: str,
    retention_s: float,
    *,
    groups: bool = True,
    approximate: bool = True,
) -> int:
    """Trim what retention allows (approximate MINID: whole nodes only, never past the id).

    With ``groups`` the bound also respects every consumer group (see ``safe_trim_id``);
    without (results stream) it is by age alone. Returns entries removed.
    """
    if retention_s <= 0:
        return 0
    if groups:
        minid = await safe_trim_id(redis, stream, retention_s)
    else:
        minid = f"{int((time.time() - retention_s) * 1000)}-0"
    if minid is None:
        return 0
    return int(await redis.xtrim(stream, minid=minid, approximate=approximate))
