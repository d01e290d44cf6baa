"""Reads and claims: bounded XREADGROUPs (one per partition on a cluster), XAUTOCLAIM of
idle entries, recovery of entries a lost read delivered, keeping held entries fresh."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.runtime.batching import pooled_connection
from gateway.runtime.cluster import refresh_slots
from gateway.runtime.consumer.base import CLUSTER_BLOCK_MS, RECOVER_PAGE, ConsumerState
from gateway.runtime.consumer.outcome import Item
from gateway.runtime.redis_errors import is_transient

log = logging.getLogger(__name__)


class Reads(ConsumerState):
    """Fetching entries for the lanes, each command sent once (``_once``)."""

    async def _read(self, count: int) -> list[Item]:
        active = self.active_streams()
        if not active:
            await self._sleep(self.config.block_ms / 1000)
            return []
        if self._cluster:
            return await self._read_cluster(active, count)
        self._reading = frozenset(active)
        try:
            lost = [s for s in active if s in self._lost]
            if lost:
                return await self._recover(lost)
            try:
                reply = await self._xreadgroup(
                    {s: ">" for s in active}, count, self.config.block_ms
                )
            except Exception:  # whatever failed, the read may have delivered entries
                self._lost.update(active)
                raise
        finally:
            self._reading = frozenset()
        return self._items(reply)

    async def _read_cluster(self, active: list[str], count: int) -> list[Item]:
        """One read per partition, all at once (one XREADGROUP cannot span slots). A
        partition whose node fails is retried after its own backoff while the others
        read on; this raises only when every partition tried has failed."""
        tried = [s for s in active if self._up(s)]
        if not tried:  # every node in its backoff: wait for the first one's next try
            loop = asyncio.get_running_loop()
            first = min(self._down[s][1] for s in active)
            await self._sleep(min(max(0.0, first - loop.time()), self.config.block_ms / 1000))
            return []
        self._reading = frozenset(tried)
        try:
            results = await asyncio.gather(
                *(self._read_partition(s, count) for s in tried), return_exceptions=True
            )
        finally:
            self._reading = frozenset()
        out: list[Item] = []
        failed: list[tuple[str, Exception]] = []
        for stream, result in zip(tried, results, strict=True):
            if isinstance(result, Exception):
                self._lost.add(stream)  # it may have delivered entries we never saw
                failed.append((stream, result))
            elif isinstance(result, BaseException):
                raise result
            else:
                self._down.pop(stream, None)
                out += result
        if failed and len(failed) == len(tried):
            raise failed[0][1]  # the whole cluster away: the consumer's own backoff
        for stream, exc in failed:
            if not is_transient(exc):
                raise exc  # NOGROUP too: the consumer recreates the groups
            self._failed(stream, exc)
        if failed:
            await refresh_slots(self.redis)
        return out

    async def _read_partition(self, stream: str, count: int) -> list[Item]:
        """A partition's entries a failed read may have delivered first, else new ones."""
        if stream in self._lost:
            return await self._recover([stream])
        return self._items(await self._xreadgroup({stream: ">"}, count, CLUSTER_BLOCK_MS))

    @staticmethod
    def _items(reply: Any) -> list[Item]:
        out: list[Item] = []
        for stream, entries in reply or []:
            s = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in entries:
                out.append(Item(s, entry_id.decode(), fields, 1))
        return out

    async def _recover(self, streams: list[str]) -> list[Item]:
        """Entries a failed read may have delivered to us although its reply never came:
        pending under our name, never seen. Our own pending list (XREADGROUP ID 0) is read
        before anything newer, so they go to their lanes ahead of the chat's later entries.
        What the lanes held when the stream's pending list was read is left out: still held,
        or finished (acked) while this ran — handled, and never to be handled again."""
        out: list[Item] = []
        for stream in streams:
            held = set(self._held[stream])  # before the first page: no await in between
            start = "0"
            while True:
                reply = await self._xreadgroup({stream: start}, RECOVER_PAGE, None)
                entries = reply[0][1] if reply else []
                for entry_id, fields in entries:
                    eid = entry_id.decode()
                    if eid in held:
                        continue
                    if fields:
                        out.append(Item(stream, eid, fields, 1))
                    else:  # trimmed while pending: nothing left to handle
                        await self.redis.xack(stream, self.config.group, eid)
                if len(entries) < RECOVER_PAGE:
                    break
                start = entries[-1][0].decode()
            self._lost.discard(stream)
        if out:
            log.warning(
                "%s: %d entries delivered by a read whose reply was lost; handled now, in order",
                self.config.role,
                len(out),
            )
        return out

    async def _xreadgroup(self, streams: dict[str, str], count: int, block: int | None) -> Any:
        args: list[Any] = ["XREADGROUP", "GROUP", self.config.group, self.name, "COUNT", count]
        if block is not None:
            args += ["BLOCK", block]
        args += ["STREAMS", *streams, *streams.values()]
        return await self._once(next(iter(streams)), *args)

    async def _once(self, key: str, *args: Any) -> Any:
        """A command that hands entries to this consumer, sent once whatever happens. If its
        reply is lost the entries are ours all the same; re-sent (redis-py retries on a
        fresh connection) it would hand over the ones after them, and the lost ones would
        come back only as idle, out of order. The caller marks the streams ``_lost``."""
        if self._cluster:
            # An explicit target node: redis-py's cluster client does not retry those (it
            # still follows a MOVED/ASK). The node comes from the slot map, so a failure
            # that made redis-py drop its map has it reloaded first.
            await self.redis.initialize()
            node = self.redis.get_node_from_key(key)  # type: ignore[attr-defined]
            return await self.redis.execute_command(*args, target_nodes=node)  # type: ignore[no-untyped-call]
        async with pooled_connection(self.redis) as conn:
            await conn.send_command(*args)
            return await self.redis.parse_response(conn, args[0])

    async def _claim_due(self, limit: int) -> list[Item]:
        """Entries idle past ``claim_idle_ms`` (any consumer's), with their delivery counts."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_claim < self.config.claim_every:
            return []
        self._last_claim = loop.time()
        try:
            return await self._claim_idle(limit)
        except Exception:
            self._lost.update(self.active_streams())  # what it claimed is ours, unseen
            raise

    async def _claim_idle(self, limit: int) -> list[Item]:
        out: list[Item] = []
        failed: list[Exception] = []
        tried = [s for s in self.active_streams() if self._up(s)]
        for stream in tried:
            try:
                out += await self._claim_stream(stream, limit - len(out))
            except Exception as exc:
                if not (self._cluster and is_transient(exc)):
                    raise
                self._lost.add(stream)  # what it claimed is ours, unseen
                self._failed(stream, exc)
                failed.append(exc)
            if len(out) >= limit:
                break
        if failed and len(failed) == len(tried):
            raise failed[0]
        return out

    async def _claim_stream(self, stream: str, limit: int) -> list[Item]:
        """One partition's entries idle past ``claim_idle_ms``, with their counts."""
        res: Any = await self._once(
            stream,
            "XAUTOCLAIM",
            stream,
            self.config.group,
            self.name,
            self.config.claim_idle_ms,
            "0-0",
            "COUNT",
            min(limit, self.config.count),
        )
        claimed = res[1] if len(res) > 1 else []
        deleted = res[2] if len(res) > 2 else []
        for entry_id in deleted:  # trimmed while pending: nothing left to handle
            await self.redis.xack(stream, self.config.group, entry_id)
        if not claimed:
            return []
        self._claimed.inc(len(claimed))
        counts = await self._delivery_counts(stream, [eid for eid, _ in claimed])
        return [
            Item(stream, entry_id.decode(), fields, counts.get(entry_id.decode(), 2))
            for entry_id, fields in claimed
        ]

    async def _delivery_counts(self, stream: str, ids: list[bytes]) -> dict[str, int]:
        lo, hi = min(ids), max(ids)
        pending = await self.redis.xpending_range(
            stream, self.config.group, min=lo, max=hi, count=len(ids) + 100
        )
        out: dict[str, int] = {}
        for item in pending:
            mid = item["message_id"]
            out[mid.decode() if isinstance(mid, bytes) else str(mid)] = int(item["times_delivered"])
        return out

    async def _keep_held_fresh(self) -> None:
        """Reset the idle time of entries waiting in our lanes, so nobody claims them."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_claim < self.config.claim_every:
            return
        # Snapshots: lanes and take-overs change these sets while XCLAIM is awaited.
        for stream, ids in list(self._held.items()):
            if ids and self._lease_valid(stream) and self._up(stream):
                try:
                    await self.redis.xclaim(
                        stream, self.config.group, self.name, 0, list(ids), justid=True
                    )
                except Exception as exc:
                    if not (self._cluster and is_transient(exc)):
                        raise
                    self._failed(stream, exc)  # the other nodes' streams go on
