"""The parking streams' keys: a fixed set spread over the Redis Cluster slot space."""

from __future__ import annotations

from redis.crc import key_slot

from gateway.core.contracts import PARK_TAGS, Keys


def test_parking_streams_cover_every_sixteenth_of_the_slot_space() -> None:
    """Stream ``i`` hashes into slots [1024 i, 1024 (i + 1)): on a cluster whose primaries
    own contiguous ranges, every primary that owns 1/16 of the slots holds one."""
    keys = Keys("tg", 4)
    streams = keys.all_parked()
    assert len(streams) == len(PARK_TAGS) == 16
    for i, stream in enumerate(streams):
        assert i * 1024 <= key_slot(stream.encode()) < (i + 1) * 1024, stream


def test_parking_stream_names_are_stable_and_prefixed() -> None:
    """A restarted poller finds what an earlier one parked only under the same names."""
    assert Keys("tg", 4).parked(0) == "tg:parked:{park-21}"
    assert Keys("other", 12).parked(15) == "other:parked:{park-62}"
    assert Keys("tg", 4).all_parked() == Keys("tg", 64).all_parked()
