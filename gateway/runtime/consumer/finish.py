"""The fenced finish: ``scripts.FINISH`` writes an entry's effects and acks it, all or none
(on a cluster, effects elsewhere first or through the partition's relay); an outcome's
unfenced ``Write``s go in the same round trip, ahead of the script; dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.crc import key_slot

from gateway.core.backoff import backoff
from gateway.core.contracts import Stage, dead_fields, decode_fields
from gateway.runtime.consumer.base import REDIS_RETRY_CAP, ConsumerState
from gateway.runtime.consumer.outcome import (
    Ack,
    Dead,
    Publish,
    RelayFullError,
    Status,
    Write,
)
from gateway.runtime.redis_errors import is_transient
from gateway.runtime.relay import relay_fields
from gateway.runtime.scripts import FINISH

log = logging.getLogger(__name__)

FINISH_LUA = FINISH.source
"""``gateway.runtime.scripts.FINISH``'s source (its KEYS, ARGV and replies are documented
there), by the name the consumer's tests load it with."""

LEASE_LOST = -1
RELAY_FULL = -2
LAST_CHANCE = 5.0
"""Seconds a cancelled finish spends on its unmade facts (``Write``s with a fallback)."""


class Finishing(ConsumerState):
    """Finishing an entry: its effects and its XACK in one fenced script."""

    async def _finish(
        self,
        stream: str,
        entry_id: str,
        outcome: Ack,
        dead: Dead | None = None,
        bot_id: int | None = None,
    ) -> Status:
        """Write the entry's effects and ack it, retrying Redis errors in place: the
        effects (a reply) must land before the chat's next entry is handled. ``dead``:
        the effects include the entry's dead letter (counted as ``bot_id``'s)."""
        attempt = 0
        written: set[int] = set()  # effects elsewhere a failed try already wrote
        made: set[Write] = set()  # the outcome's Writes Redis took (or their fallback made)
        while True:
            try:
                acked = await self._finish_once(stream, entry_id, outcome, written, made)
            except asyncio.CancelledError:
                await self._last_chance(outcome.writes, made)
                raise
            except Exception as exc:
                # The first failed try makes its writes on their own at once, the way they
                # were made before they rode the finish (the sender's marker, retried in
                # place), whatever happens to the finish next.
                await self._fall_back(outcome.writes, made)
                if not (is_transient(exc) or isinstance(exc, RelayFullError)):
                    raise  # refused for good: counted as a failed delivery (_handle_one)
                if outcome.marker is not None and outcome.marker.cache:
                    # A cache never holds the entry: the next try goes without it.
                    kept = tuple(e for e in outcome.effects if e is not outcome.marker)
                    outcome = Ack(kept)
                if self.stopping:
                    return Status.RETRY  # handed back; the next run redoes the entry
                if self.leases is not None and not self._holds(stream):
                    return Status.LOST
                delay = backoff(attempt, base=0.1, cap=REDIS_RETRY_CAP)
                attempt += 1
                log.warning(
                    "%s: finishing %s failed (%s); retry in %.1fs",
                    self.config.role,
                    entry_id,
                    exc,
                    delay,
                )
                await self._sleep(delay)
                continue
            if acked == LEASE_LOST:
                log.warning(
                    "%s: lease of partition %d lost; %s left for its new owner",
                    self.config.role,
                    self._partition_of[stream],
                    entry_id,
                )
            elif dead is not None:
                self.dead += 1
                self._count_dead(dead, bot_id)
                log.warning(
                    "dead-lettered %s %s from %s: %s (%s)",
                    self.config.stage.value,
                    entry_id,
                    stream,
                    dead.reason.value,
                    dead.error[:200],
                )
            else:
                self.handled += 1
            return Status.DONE

    def _count_dead(self, dead: Dead, bot_id: int | None) -> None:
        stage, m = self.config.stage, self.metrics
        bot = m.bots.label(bot_id) if m.enabled else ""
        m.child("tg_gateway_dead_letters_total", stage.value, dead.reason.value, bot).inc()
        if stage is Stage.WORKER:
            m.child("tg_gateway_worker_updates_total", "dead_lettered", bot).inc()

    async def _finish_once(
        self, stream: str, entry_id: str, outcome: Ack, written: set[int], made: set[Write]
    ) -> int:
        """One ``FINISH`` call (coalesced with other lanes'); -1 if the lease was lost.
        ``written``: indexes of ``outcome.publishes`` already written elsewhere (by an
        earlier try of this finish, whose script then failed), updated here; ``made``:
        the outcome's ``Write``s made, updated here (a try repeats them all)."""
        cfg = self.config
        p = self._partition_of[stream]
        publish = [(e.stream, e.fields) for e in outcome.publishes]
        marker = (outcome.marker.key, outcome.marker.ttl) if outcome.marker else None
        relayed = 0
        relay = self.keys.relay(cfg.role, p)
        if self.relay is not None:
            # A script's keys must share a slot: effects elsewhere go first, unfenced (a
            # repeat publishes a copy the next stage dedupes by id; the marker is a SET).
            # One whose node does not answer goes to the partition's relay instead, in
            # the script: the finish does not wait for that node (``gateway/runtime/relay.py``).
            slot = key_slot(stream.encode())
            if key_slot(relay.encode()) != slot:  # a stream that is no partition of ours
                relay = stream
            local: list[tuple[str, Mapping[str, str | bytes]]] = []
            for i, (s, f) in enumerate(publish):
                if key_slot(s.encode()) == slot:
                    local.append((s, f))
                elif i in written:
                    continue
                elif relay == stream:
                    await self.redis.xadd(s, dict(f))  # type: ignore[arg-type]
                    written.add(i)
                elif await self.relay.write_direct(s, f):
                    written.add(i)
                else:
                    local.append((relay, relay_fields(s, f)))
                    relayed += 1
            publish = local
            if marker is not None and key_slot(marker[0].encode()) != slot:
                await self.redis.set(marker[0], "1", ex=marker[1])
                marker = None
        if self.leases is not None:
            lease, owner = self.keys.lease(cfg.role, p), self.name
        else:
            lease, owner = stream, ""
        keys = [stream, lease, marker[0] if marker else stream, relay, *(s for s, _ in publish)]
        args: list[Any] = [cfg.group, owner, entry_id, str(marker[1]) if marker else "0"]
        args += [relayed, cfg.relay_cap]
        for _, entry in publish:
            args.append(2 * len(entry))
            for k, v in entry.items():
                args += [k, v]
        # The writes first, in the same pipeline: unfenced, they land whatever the script
        # finds (Redis runs a connection's commands in order; on a cluster one in another
        # slot goes to its own node's pipeline in the same call).
        writes = outcome.writes
        *replies, acked = await self._calls.run(
            *(w.command for w in writes), ("EVALSHA", self._finish_sha, len(keys), *keys, *args)
        )
        await self._after_writes(writes, replies, made)
        if isinstance(acked, Exception):
            raise acked
        if int(acked) == RELAY_FULL:
            raise RelayFullError(f"relay of partition {p} holds {cfg.relay_cap} entries")
        if relayed and int(acked) >= 0 and self.relay is not None:
            self.relay.note_relayed(p, relayed)
        return int(acked)

    async def _after_writes(
        self, writes: Sequence[Write], replies: list[Any], made: set[Write]
    ) -> None:
        """Each write Redis took is ``written``; one it refused gets its ``fallback``."""
        for write, reply in zip(writes, replies, strict=True):
            if isinstance(reply, Exception):
                log.warning("%s: write of %s refused: %s", self.config.role, write.key, reply)
                await self._fall_back((write,), made)
            else:
                made.add(write)
                if write.written is not None:
                    write.written()

    async def _fall_back(self, writes: Sequence[Write], made: set[Write]) -> None:
        """Writes not made yet, each on its own (bounded by its fallback; one without a
        fallback waits for the finish's next try); one that fails even so is logged."""
        for write in writes:
            if write.fallback is None or write in made:
                continue
            made.add(write)  # tried once: not again at each failed try of the finish
            try:
                await write.fallback()
            except Exception as exc:
                log.error(
                    "%s: write of %s not made (%s: %s)",
                    self.config.role,
                    write.key,
                    type(exc).__name__,
                    exc,
                )

    async def _last_chance(self, writes: Sequence[Write], made: set[Write]) -> None:
        """Cancelled (the end of a shutdown's grace) before the writes were made: each
        write that has a fallback (a fact, like a sent marker) gets one direct try, at
        most ``LAST_CHANCE`` seconds, so it is not lost with the process."""
        for write in writes:
            if write.fallback is None or write in made:
                continue
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LAST_CHANCE):
                    await self.redis.execute_command(*write.command)  # type: ignore[no-untyped-call]
                if write.written is not None:
                    write.written()

    async def _dead(
        self,
        stream: str,
        entry_id: str,
        fields: dict[bytes, bytes],
        deliveries: int,
        outcome: Dead,
    ) -> Status:
        """Dead-letter the entry and ack it: one finish (fenced, atomic with the ack; on a
        cluster the dead letter is written first, or relayed like any effect elsewhere)."""
        letter = dead_fields(
            stage=self.config.stage,
            reason=outcome.reason,
            stream=stream,
            entry_id=entry_id,
            entry=decode_fields(fields),
            attempts=deliveries,
            error=outcome.error,
        )
        effects = Ack((*outcome.effects, Publish(self.keys.dead, letter)))
        return await self._finish(stream, entry_id, effects, outcome, bot_of(fields))


def bot_of(fields: Mapping[bytes, bytes]) -> int | None:
    """The bot id an entry names (its ``bot_id`` field; None: none, or not a number)."""
    raw = fields.get(b"bot_id")
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None
