"""The Redis Cluster client (``GatewayCluster``) and its slot-map reloads (``refresh_slots``).

``gateway.runtime.streams.connect`` builds a ``GatewayCluster`` for ``REDIS_CLUSTER=true``;
the degraded paths (``gateway.runtime.slots``) and the consumer ask it for a fresh slot map
after a node failed, through ``refresh_slots``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.runtime.redis_errors import is_transient

REFRESH_EVERY = 0.5
"""Seconds between two slot-map reloads of one cluster client after node failures: each
reload marks every connection of every node for reconnection (redis-py 8.1)."""

_in_command: contextvars.ContextVar[bool] = contextvars.ContextVar("_in_command", default=False)


class GatewayCluster(RedisCluster):
    """redis-py's cluster client, except that one node in trouble stays its own problem.

    redis-py 8.1 does three things that turn one node's outage into every node's:

    - A CLUSTERDOWN (or an uncovered slot) from one node calls ``aclose()``, which cuts
      the commands in flight on the healthy nodes (a node rejoining after a restart
      answers CLUSTERDOWN for a while). Here that only asks for a fresh slot map before
      the next command; ``aclose()`` from outside still closes the client.
    - After any connection error it reloads the slot map and then the command table
      (``COMMAND``) from its default node, the first primary it knows, which may be the
      node that is down. That fails the reload as a whole, closes every node's
      connections (again cutting the healthy nodes' commands in flight) and fails the
      command that asked, on whichever node it was meant for; the next command tries
      the same. The command table does not change with the topology: here it is loaded
      once, and a reload that fails closes nothing. The keys of XREAD and XREADGROUP
      (movable keys, which redis-py asks that same node for with ``COMMAND GETKEYS``,
      once per call) are read off the arguments here.
    - Every failed command asks for a reload, and each reload marks every connection of
      every node for reconnection. While a node is down, its partitions' retries would
      keep the whole client reconnecting. Here a reload runs at most every
      ``REFRESH_EVERY`` seconds (the client's own and ``maybe_reload_slots``'s together);
      a failover is still seen within that.
    """

    _refreshed_at = 0.0

    def _reloaded_recently(self) -> bool:
        return time.monotonic() - self._refreshed_at < REFRESH_EVERY

    async def maybe_reload_slots(self) -> None:
        """Reload the slot map now (CLUSTER SLOTS) unless it was in the last
        ``REFRESH_EVERY`` s, so the next command sent to an explicit node (``target_nodes``,
        which redis-py never retries or re-routes on a node failure) goes to the slot's
        current primary; and put the primaries that do not answer last, because
        redis-py's ``RedisCluster.initialize`` asks its first primary for COMMAND and fails
        as a whole while that one is down. Failing here is not an error (a transient one is
        swallowed): the next call tries again."""
        if self._reloaded_recently():
            return
        self._refreshed_at = time.monotonic()
        manager = self.nodes_manager
        try:
            await manager.initialize()
            primaries = self.get_primaries()
            answers = await asyncio.gather(
                *(node.execute_command("PING") for node in primaries), return_exceptions=True
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            return
        for node, answer in zip(primaries, answers, strict=True):
            if isinstance(answer, BaseException):
                manager.move_node_to_end_of_cached_nodes(node.name)

    async def _execute_command(self, target_node: Any, *args: Any, **kwargs: Any) -> Any:
        token = _in_command.set(True)
        try:
            return await super()._execute_command(target_node, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError):
            if self._reloaded_recently():
                self._initialize = False  # reloaded a moment ago: the map is fresh enough
            raise
        finally:
            _in_command.reset(token)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() in ("XREAD", "XREADGROUP"):
            keys = _stream_keys(args[3:] if command.upper() == "XREADGROUP" else args)
            slots = {self.keyslot(key) for key in keys}
            if len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> GatewayCluster:
        if not self.commands_parser.commands:  # the first start: redis-py's own
            await super().initialize(additional_startup_nodes_info, last_failed_node_name)
            self._refreshed_at = time.monotonic()
            return self
        if self._initialize:
            if not self._lock:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._initialize:
                    self._refreshed_at = time.monotonic()
                    await self.nodes_manager.initialize(
                        additional_startup_nodes_info=additional_startup_nodes_info,
                        last_failed_node_name=last_failed_node_name,
                    )
                    self._initialize = False
        return self

    async def aclose(self) -> None:
        if _in_command.get():
            self._initialize = True
            return
        await super().aclose()


def _stream_keys(args: Sequence[Any]) -> list[Any]:
    """The stream names in an XREAD's arguments (after the command name; an XREADGROUP's
    after ``GROUP group consumer``): the first half of what follows ``STREAMS``."""
    for i, arg in enumerate(args):
        word = arg.decode() if isinstance(arg, bytes) else str(arg)
        if word.upper() == "STREAMS":
            rest = list(args[i + 1 :])
            return rest[: len(rest) // 2]
    return []


async def refresh_slots(redis: Any) -> None:
    """After a node failure: ``GatewayCluster.maybe_reload_slots`` on a cluster client (the
    only kind ``connect`` builds); a no-op on a single Redis."""
    if isinstance(redis, GatewayCluster):
        await redis.maybe_reload_slots()
