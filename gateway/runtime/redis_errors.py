"""What counts as a transient Redis failure: one answer for every retry loop.

A role retries (with a bounded backoff) what Redis or the network will get over by
itself, and lets everything else surface, so a real bug or a wrong script is seen at once
instead of being retried forever:

- transient: the connection failed or timed out; the cluster is down, or a slot is
  uncovered (``CLUSTERDOWN``, redis-py's slot-map errors while a node is away); the node
  is loading its data (``LOADING``), not the primary any more (``READONLY``, ``MASTERDOWN``,
  a blocked read ``UNBLOCKED`` by a failover), asks us to wait (``TRYAGAIN``) or points
  elsewhere (``MOVED``/``ASK``, which reach us only for a command sent to an explicit node);
  and an ``AttributeError``/``TypeError`` (under uvloop, a ``RuntimeError``) that
  redis-py's connection code leaks when its connection was closed under a command (see
  ``is_closed_connection_leak``);
- permanent: everything else, e.g. ``NOSCRIPT`` (the caller reloads), ``WRONGTYPE``, a
  script error, a wrong argument.

``NOGROUP`` is neither: the caller recreates its group (``gateway.runtime.streams.ensure_groups``).
"""

from __future__ import annotations

import asyncio
import os
from types import TracebackType

import redis
from redis.exceptions import (
    AskError,
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def reraise_cancel() -> None:
    """Raise CancelledError if this task has a cancel pending. Called in a handler of
    ``Exception``: redis-py and ``asyncio.wait_for``/``asyncio.timeout`` on Python 3.11 can
    turn a cancel that races a timeout into an ordinary exception, and a loop that retries
    it would never end."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


TRANSIENT_REPLIES = frozenset(
    {"CLUSTERDOWN", "TRYAGAIN", "LOADING", "READONLY", "MASTERDOWN", "MOVED", "ASK", "UNBLOCKED"}
)
"""Error replies (their first word) that a node gives while the cluster heals."""

_CLUSTER_STATES = (
    "All slots are not covered",  # slot map refresh while a node is down
    "Redis Cluster cannot be connected",  # no startup node answered
    "could not agree on a valid slots cache",  # nodes disagree mid-failover
    "is not covered by the cluster",  # SlotNotCoveredError
)
"""redis-py's own cluster exceptions (not RedisErrors) that a node outage causes."""

_REDIS_DIR = os.path.dirname(os.path.abspath(redis.__file__))
_CONNECTION_CODE = (
    os.path.join(_REDIS_DIR, "asyncio", "connection.py"),
    os.path.join(_REDIS_DIR, "connection.py"),
    os.path.join(_REDIS_DIR, "_parsers") + os.sep,
)


_CLOSED_HANDLE = "unable to perform operation on"
"""uvloop's RuntimeError for a write on a transport that was closed: "unable to perform
operation on <TCPTransport closed=True ...>; the handler is closed"."""


def is_closed_connection_leak(exc: BaseException) -> bool:
    """An ``AttributeError``/``TypeError`` raised inside redis-py's connection code: its
    connection was closed under a command (``_writer``/``_reader`` set to None by a
    concurrent disconnect, or a transport torn down by the peer). redis-py 8.1 lets these
    escape instead of a ``ConnectionError`` (redis/redis-py#4287, fixed by #4288 after the
    8.1.0 release); redis-py has already disconnected the connection, so a retry runs on
    a fresh one. Under uvloop (the roles' loop) a write on a transport the peer closed is
    a ``RuntimeError`` ("unable to perform operation on <TCPTransport closed=True>"), the
    same state. An AttributeError anywhere else is a bug and stays one."""
    uvloop_closed = isinstance(exc, RuntimeError) and str(exc).startswith(_CLOSED_HANDLE)
    if not (uvloop_closed or isinstance(exc, (AttributeError, TypeError))):
        return False
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if filename.startswith(_CONNECTION_CODE):
            return True
        tb = tb.tb_next
    return False


def is_transient(exc: BaseException) -> bool:
    """Will Redis get over this by itself (retry with a backoff), or is it permanent?"""
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        return True  # builtin TimeoutError and ConnectionError are OSErrors
    if isinstance(exc, (ClusterError, TryAgainError, AskError, ReadOnlyError)):
        return True  # ClusterDownError, MasterDownError, "TTL exhausted", MovedError
    if isinstance(exc, ResponseError):
        words = str(exc).split(maxsplit=1)
        return bool(words) and words[0] in TRANSIENT_REPLIES
    if isinstance(exc, RedisClusterException):
        return any(state in str(exc) for state in _CLUSTER_STATES)
    return is_closed_connection_leak(exc)


def as_connection_error(exc: BaseException) -> BaseException:
    """``exc``, or a ``ConnectionError`` in place of a leak of a closed connection, so the
    callers' ``except RedisError`` (and redis-py's own retries) see what it really was."""
    if is_closed_connection_leak(exc):
        error = RedisConnectionError(f"connection closed under a command ({exc!r})")
        error.__cause__ = exc
        return error
    return exc
