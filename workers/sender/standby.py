"""Which standby set of the limiter's keys a sender uses while its own set's node is away
(``workers.sender.ratelimit``, module docstring)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.core.contracts import Keys
from gateway.runtime.scripts import GCRA
from gateway.runtime.streams import is_cluster

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
