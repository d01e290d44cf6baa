"""The cluster client reads the streams of XREAD/XREADGROUP off their arguments."""

from __future__ import annotations

from redis.crc import key_slot

from gateway.runtime.cluster import GatewayCluster, _stream_keys


def test_xread_streams_are_the_first_half_after_streams() -> None:
    args = ["COUNT", 10, "BLOCK", 100, "STREAMS", "a:{1}", "b:{1}", "0", "$"]
    assert _stream_keys(args) == ["a:{1}", "b:{1}"]


async def test_xreadgroup_is_routed_without_asking_a_node() -> None:
    """No connection is made: the slot comes from the arguments, even with a group and
    a consumer named "streams"."""
    client = GatewayCluster(host="127.0.0.1", port=1)  # nothing listens there
    args = ("GROUP", "streams", "streams", "COUNT", 5, "STREAMS", "s:{2}", ">")
    assert await client._determine_slot("XREADGROUP", *args) == key_slot(b"s:{2}")
    assert await client._determine_slot("XREAD", "STREAMS", "t:{7}", "0") == key_slot(b"t:{7}")


def test_no_streams_keyword_gives_no_keys() -> None:
    assert _stream_keys(["COUNT", 1]) == []
