"""Which standby set of the limiter's keys a sender uses while its own set's node is away,
and how long it waits, probes and confirms meanwhile (``workers.sender.ratelimit``, module
docstring)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.core.contracts import Keys
from gateway.runtime.scripts import GCRA
from gateway.runtime.streams import is_cluster

LIMITER_TIMEOUT = 1.0
"""Seconds a limiter call may take; past it (or on a transient error) the sender turns to
the standby set or counts in process instead of waiting for the limiter's node. Only the call that
finds the node away (one per probe) waits this long; the others count in process."""
PROBE_EVERY = 0.75
"""Seconds between tries of the own set while on the standby or degraded."""
CONFIRM_AFTER = 0.25
"""Seconds after a first failure before Redis is asked again; only if that fails too does
the sender turn to the standby or count in process (until then its sends wait): a blip
seen by this sender alone, while the others still take the full rate from Redis, adds
nothing."""
STANDBY_RETRY = 3.0
"""Seconds in process before a standby that failed twice is tried again."""
RECOVER_GRACE_MS = 5000
"""How long the shared limiter stays at one share after a sender came back: longer than
any other degraded sender needs to probe Redis and come back too (``PROBE_EVERY`` plus a
``LIMITER_TIMEOUT``), and than the cluster clients' reconnects after a node's restart,
during which a sender may fail once more and count in process again."""
STANDBY_CANDIDATES = 64  # standby sets tried for one on another node (3 nodes: 1-2 tries)


def standby_index(redis: Any, keys: Keys, bot_id: int) -> int:
    """The standby set to use while the node of the bot's own limiter set is away: the
    first k in 1..``STANDBY_CANDIDATES`` whose slot another node serves, in the client's
    slot map; 0 (none) on a single Redis or without a slot map."""
    if not is_cluster(redis):
        return 0
    try:
        slots = redis.nodes_manager
        home = slots.get_node_from_slot(redis.keyslot(keys.rate_global(bot_id))).name
        for k in range(1, STANDBY_CANDIDATES + 1):
            node = slots.get_node_from_slot(redis.keyslot(keys.rate_global(bot_id, k))).name
            if node != home:
                return k
    except Exception:
        return 0  # no slot map learned: count in process
    return 0


async def slow_standby(
    redis: Any,
    keys: Keys,
    bot_id: int,
    standby: int,
    share_us: int,
    *,
    grace_ms: int,
    timeout: float,
) -> None:
    """Leave the standby set at one share (``share_us``) for ``grace_ms``: the senders
    still on it (until their next probe) and the ones back on the own set never sum past
    the limit. A GCRA call that grants nothing: the share pushes the set's schedule one
    share ahead. Bounded by ``timeout`` seconds."""
    chat = 0  # a chat key the call reads and, granting nothing, never writes
    k = keys
    names = [
        k.flood_wait(bot_id, None, standby),
        k.flood_wait(bot_id, chat, standby),
        k.rate_global(bot_id, standby),
        k.rate_chat(bot_id, chat, standby),
        k.rate_recovering(bot_id, standby),
    ]
    args = [share_us, share_us, 0, share_us, grace_ms]
    async with asyncio.timeout(timeout):
        await GCRA.run(redis, names, args)
