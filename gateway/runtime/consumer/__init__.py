"""The consumer-group loop shared by the worker and the sender (redis-py directly).

``gateway.runtime.consumer`` is the import path of its public names; the parts, each read
in one sitting (``StreamConsumer`` in ``core`` composes them):

- ``outcome``: what a handler returns (``Ack``, ``Dead``, ``Retry`` with typed effects
  ``Publish``, ``Marker``, ``Write``) and is given (``Fence``, ``Item``);
- ``base``: ``ConsumerConfig``, the state the parts share, the lease predicates;
- ``reads``: reads, claims, recovery of the entries a lost read delivered;
- ``lanes``: per-chat lanes, dispatch, capacity, take-over and hand-back;
- ``finish``: the fenced finish, ``scripts.FINISH`` (with the relay on a cluster), dead
  letters; ``FINISH_LUA``, the script's source;
- ``trim``: retention;
- ``core``: ``StreamConsumer`` (run, the read loop, group bootstrap), ``run_until_stopped``.
"""

from gateway.runtime.consumer.base import (
    CLUSTER_BLOCK_MS,
    LAPSE_POLL,
    RECOVER_PAGE,
    REDIS_RETRY_CAP,
    TRIM_TIMEOUT,
    ConsumerConfig,
    consumer_name,
)
from gateway.runtime.consumer.core import StreamConsumer, run_until_stopped
from gateway.runtime.consumer.finish import FINISH_LUA, LEASE_LOST, RELAY_FULL
from gateway.runtime.consumer.outcome import (
    Ack,
    Dead,
    Effect,
    Fence,
    Handler,
    Item,
    LeaseLost,
    Marker,
    Outcome,
    Publish,
    RelayFullError,
    Retry,
    Write,
)

__all__ = [
    "CLUSTER_BLOCK_MS",
    "FINISH_LUA",
    "LAPSE_POLL",
    "LEASE_LOST",
    "RECOVER_PAGE",
    "REDIS_RETRY_CAP",
    "RELAY_FULL",
    "TRIM_TIMEOUT",
    "Ack",
    "ConsumerConfig",
    "Dead",
    "Effect",
    "Fence",
    "Handler",
    "Item",
    "LeaseLost",
    "Marker",
    "Outcome",
    "Publish",
    "RelayFullError",
    "Retry",
    "StreamConsumer",
    "Write",
    "consumer_name",
    "run_until_stopped",
]
