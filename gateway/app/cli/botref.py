"""``--bot NAME|ID`` of the operator's commands (``streams``, ``dlq``, ``record``,
``replay``; issue 15): the bot, found in the deployment's registry (``TELEGRAM_BOT_TOKEN``,
``BOTS_FILE`` and the Redis hash), or one line naming what is known."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.core.bots import BotSpec, BotsSettings, BotTable
from gateway.core.contracts import Keys
from gateway.core.errors import UsageError
from gateway.core.settings import TelegramSettings, load
from gateway.runtime.bots import registry_of

SHOWN = 10  # bots a "no such bot" line names


@dataclass(frozen=True, slots=True)
class BotRef:
    """The bot a ``--bot`` names: its id, and its definition when the registry has it
    (an id alone: a bot no longer registered, whose entries may still be around)."""

    bot_id: int
    spec: BotSpec | None = None

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else str(self.bot_id)


async def bot_table(redis: aioredis.Redis, keys: Keys) -> BotTable:
    """Every bot of the deployment now: ``TELEGRAM_BOT_TOKEN``'s (even with
    ``TELEGRAM_ENABLED=false``), ``BOTS_FILE``'s and the Redis registry's. Redis must
    answer (a ping first: an unreachable Redis is that error, not "no such bot")."""
    await redis.ping()
    tg = load(TelegramSettings, telegram_enabled=False)
    return await registry_of(tg, load(BotsSettings), redis, keys).load()


def find_bot(table: BotTable, ref: str, flag: str = "--bot", *, any_id: bool = True) -> BotRef:
    """The bot ``ref`` names (a name, or an id); ``any_id``: an id the registry does not
    hold is taken as it is (a removed bot's entries), else refused like an unknown name."""
    ref = ref.strip()
    spec = table.find(ref)
    if spec is not None:
        return BotRef(spec.bot_id, spec)
    if any_id and ref.isdigit():
        return BotRef(int(ref))
    names = [b.name for b in table]
    known = ", ".join(names[:SHOWN]) + (
        f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    )
    raise UsageError(f"{flag} {ref}: no such bot (known: {known or 'none'})")


async def resolve_bot(
    redis: aioredis.Redis, keys: Keys, ref: str | None, *, any_id: bool = True
) -> BotRef | None:
    """``find_bot`` in the deployment's ``bot_table``; None when no ``--bot`` was given."""
    if ref is None:
        return None
    return find_bot(await bot_table(redis, keys), ref, any_id=any_id)
