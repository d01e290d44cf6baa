"""Where aiogram keeps the FSM state and data of the user's routers.

Redis (the gateway's own client, cluster or not: aiogram's ``RedisStorage`` runs one
single-key GET/SET/DEL per call), each key expiring ``ttl`` seconds after its last write:
nothing grows per user in the process, and a conversation survives a restart or moves
with its chat to another worker. Keys are ``{prefix}:fsm:{p}:<bot>:<chat>:<user>:state|
data``, ``{p}`` the hash tag of the chat's partition (``Keys.chat_tag``): on a Redis
Cluster a chat's state lives on the node of its partition, so one node's outage stalls
only its own partitions' chats (issue 10; before, the keys hashed to any node).
"""

from __future__ import annotations

from typing import Any, Literal

from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, StorageKey
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.fsm.storage.redis import RedisStorage

from gateway.core.contracts import Keys


class ChatTagKeyBuilder(DefaultKeyBuilder):
    """aiogram's key format with the chat's partition tag after the prefix."""

    def __init__(self, keys: Keys) -> None:
        super().__init__(prefix=keys.fsm_prefix, with_bot_id=True)
        self._keys = keys

    def build(self, key: StorageKey, part: Literal["data", "state", "lock"] | None = None) -> str:
        rest = super().build(key, part)[len(self.prefix) :]
        return f"{self.prefix}:{self._keys.chat_tag(key.bot_id, key.chat_id)}{rest}"


def fsm_storage(redis: Any, keys: Keys, ttl: int, *, memory: bool = False) -> BaseStorage:
    """The user's routers' FSM storage (module docstring); ``memory`` (the sandbox only):
    a per-process dict that keeps every user's record until exit."""
    if memory:
        return MemoryStorage()
    return RedisStorage(redis, key_builder=ChatTagKeyBuilder(keys), state_ttl=ttl, data_ttl=ttl)
