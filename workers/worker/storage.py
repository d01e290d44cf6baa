"""Where aiogram keeps the FSM state of the user's routers (moved from ``handler.py``, which
still re-exports it, to keep that module under 400 lines)."""

from __future__ import annotations

from typing import Any

from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.fsm.storage.redis import RedisStorage

from gateway.core.contracts import Keys


def fsm_storage(redis: Any, keys: Keys, ttl: int, *, memory: bool = False) -> BaseStorage:
    """Where aiogram keeps the FSM state and data of the user's routers.

    Redis (the gateway's own client, cluster or not: aiogram's ``RedisStorage`` runs one
    single-key GET/SET/DEL per call), under ``Keys.fsm_prefix``, each key expiring
    ``ttl`` seconds after its last write: nothing grows per user in the process, and a
    conversation survives a restart or moves with its chat to another worker. ``memory``
    (the sandbox only): a per-process dict that keeps every user's record until exit."""
    if memory:
        return MemoryStorage()
    return RedisStorage(
        redis,
        key_builder=DefaultKeyBuilder(prefix=keys.fsm_prefix, with_bot_id=True),
        state_ttl=ttl,
        data_ttl=ttl,
    )
