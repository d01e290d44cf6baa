"""gateway.runtime.redis_errors: which Redis failures every retry loop waits out, which surface."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    DataError,
    MasterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.runtime.redis_errors import (
    as_connection_error,
    is_closed_connection_leak,
    is_transient,
)

TRANSIENT: list[BaseException] = [
    RedisConnectionError("Connection closed by server."),
    RedisTimeoutError("Timeout reading from 127.0.0.1:7000"),
    TimeoutError("no answer from Redis within 2s"),  # gateway.runtime.batching.Coalescer
    ConnectionResetError(104, "Connection reset by peer"),
    ConnectionRefusedError(111, "Connect call failed"),
    ClusterDownError("The cluster is down"),
    MasterDownError("Link with MASTER is down"),
    ClusterError("TTL exhausted."),
    TryAgainError("Multiple keys request during rehashing of slot"),
    BusyLoadingError("Redis is loading the dataset in memory"),
    ReadOnlyError("You can't write against a read only replica."),
    MovedError("3999 127.0.0.1:6381"),
    AskError("3999 127.0.0.1:6381"),
    ResponseError("UNBLOCKED force unblock from blocking operation, instance state changed"),
    ResponseError("CLUSTERDOWN Hash slot not served"),
    ResponseError("LOADING Redis is loading the dataset in memory"),
    SlotNotCoveredError('Slot "3999" is not covered by the cluster.'),
    RedisClusterException("All slots are not covered after query all startup_nodes. 1 of 16384"),
    RedisClusterException("Redis Cluster cannot be connected. Please provide at least one"),
]

PERMANENT: list[BaseException] = [
    NoScriptError("No matching script. Please use EVAL."),
    ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ResponseError("ERR Error running script (call to f_1): @user_script:1: bad"),
    ResponseError("NOGROUP No such key 'x' or consumer group 'g'"),  # the caller recreates it
    ResponseError(""),
    ClusterCrossSlotError("Keys in request don't hash to the same slot"),
    AuthenticationWrongNumberOfArgsError("wrong number of arguments for 'auth' command"),
    DataError("Invalid input of type: 'NoneType'"),
    RedisClusterException("No targets were found to execute ('XADD',) command on"),
    AttributeError("'NoneType' object has no attribute 'decode'"),  # our bug, not Redis
    TypeError("unsupported operand"),
    ValueError("bad"),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=repr)
def test_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=repr)
def test_permanent(exc: BaseException) -> None:
    assert not is_transient(exc)


async def test_a_write_on_a_closed_connection_is_a_connection_error() -> None:
    """redis-py 8.1's own write after its own disconnect (its _writer is None) leaks an
    AttributeError (redis/redis-py#4287): recognised by where it was raised, translated."""
    conn = Connection()
    assert conn._writer is None  # never connected, or disconnected under a command
    with pytest.raises(AttributeError) as info:
        await conn._send_packed_command([b"PING\r\n"])
    leak = info.value
    assert is_closed_connection_leak(leak) and is_transient(leak)
    error = as_connection_error(leak)
    assert isinstance(error, RedisConnectionError) and error.__cause__ is leak
    assert "writelines" in str(error)
    # The same error raised by other code is a bug, not a connection state.
    writer = None
    with pytest.raises(AttributeError) as ours:
        writer.writelines([])  # type: ignore[attr-defined]
    assert not is_closed_connection_leak(ours.value) and not is_transient(ours.value)
    assert as_connection_error(ours.value) is ours.value


def test_a_write_on_a_transport_closed_under_uvloop_is_a_connection_error(redis_url: str) -> None:
    """Under uvloop (the roles' event loop) a write on a connection whose transport the
    peer closed raises RuntimeError("unable to perform operation on <TCPTransport
    closed=True>"): a sender exited on it in a node-kill scenario. It is the same closed
    connection, so it is transient; the same RuntimeError raised elsewhere is not."""
    uvloop = pytest.importorskip("uvloop")
    host, port = redis_url.split("//")[1].split("/")[0].split(":")

    async def write_after_abort() -> BaseException:
        conn = Connection(host=host, port=int(port))
        await conn.connect()
        assert conn._writer is not None
        conn._writer.transport.abort()  # the peer is gone; redis-py has not noticed yet
        await asyncio.sleep(0.01)
        try:
            await conn.send_command("PING")
        except BaseException as exc:
            return exc
        finally:
            await conn.disconnect()
        raise AssertionError("the write on a closed transport succeeded")

    leak = uvloop.run(write_after_abort())
    assert isinstance(leak, RuntimeError) and "closed=True" in str(leak)
    assert is_closed_connection_leak(leak) and is_transient(leak)
    assert isinstance(as_connection_error(leak), RedisConnectionError)
    ours = RuntimeError("unable to perform operation on <TCPTransport closed=True>; mine")
    assert not is_closed_connection_leak(ours) and not is_transient(ours)
