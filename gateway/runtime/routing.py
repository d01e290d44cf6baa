"""Where an entry goes: the one mapping from a chat to its partition's stream, and from a
role's streams to their partitions. Every publisher of outbound entries (the finish of a
worker, a worker's ``now=True`` send, ``publish_outbound``) and every consumer asks here;
the sender also for the sent markers of an entry's parts."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.contracts import Keys, OutboundEntry


def outbound_stream(keys: Keys, entry: OutboundEntry) -> str:
    """The outbound stream of ``entry``'s chat (its partition: ``Keys.partition``)."""
    return keys.outbound(keys.partition(entry.bot_id, entry.chat_id))


def sent_marker(keys: Keys, entry: OutboundEntry, part: int) -> str:
    """The sent marker of ``entry``'s part ``part``: in its outbound stream's slot, so the
    sender's last check (``FENCE``) reads it with the partition's lease in one script."""
    return keys.sent(keys.partition(entry.bot_id, entry.chat_id), f"{entry.reply_id}#{part}")


def partitions_of(streams: Sequence[str]) -> dict[str, int]:
    """stream -> partition of one role's streams, where ``streams[p]`` is partition ``p``
    (``Keys.all_updates()``, ``Keys.all_outbound()``)."""
    return {stream: p for p, stream in enumerate(streams)}
