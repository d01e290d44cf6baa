"""The one chat -> stream mapping (``gateway.runtime.routing``)."""

from redis.crc import key_slot

from gateway.core.contracts import Keys, OutboundEntry, partition_for
from gateway.runtime.routing import outbound_stream, partitions_of

KEYS = Keys("tg", 8)


def entry(chat_id: int | str) -> OutboundEntry:
    return OutboundEntry(
        reply_id="r", bot_id=1, chat_id=chat_id, method="sendMessage", payload={"text": "t"}
    )


def test_a_reply_goes_to_the_slot_of_its_chats_update_stream() -> None:
    """A worker's replies share the update's hash tag, so its finish writes them in the
    partition's slot (atomic with the ack on a cluster too), for users and groups alike."""
    for chat in [*range(-50, 50), -1001234567890, 7689012345, "@channel"]:
        p = partition_for(chat, KEYS.partitions, 1)
        assert key_slot(outbound_stream(KEYS, entry(chat)).encode()) == key_slot(
            KEYS.updates(p).encode()
        )
    assert {outbound_stream(KEYS, entry(c)) for c in range(100)} == set(KEYS.all_outbound())


def test_partitions_of_numbers_a_roles_streams_in_order() -> None:
    """``streams[p]`` is partition ``p``: the consumer's and the worker's map."""
    assert partitions_of(KEYS.all_updates()) == {KEYS.updates(p): p for p in range(8)}
