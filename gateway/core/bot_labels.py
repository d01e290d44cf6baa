"""The ``bot`` label of the per-bot metrics (issue 15): a bot id -> the bot's name, capped.

``BotLabels`` maps an entry's bot id to the label value through the current ``BotTable``:
the bot's name for the first ``limit`` bots of the table (its order: the default bot
first, then by name), ``other`` for the bots past them, ``unknown`` for an id the table
does not hold (an entry of a removed or never-registered bot), ``none`` where no bot is
known yet (a webhook request refused before its bot was found). The label is a pure
function of the table, so every replica that has seen the same table labels alike; a
bot added with a name that sorts earlier can move the last labelled bot to ``other``
(its old series stay, frozen: ``rate()`` of them is 0). ``gateway.core.bots`` keeps the
three words out of bot names.

``PerBot`` keeps one object per label (a role's pre-bound children for that bot) and a
bot id -> object cache that is dropped when the table changes: the hot path is one
identity check and one dict lookup. Ids the table does not hold are not cached (an
entry can carry any id), so the cache holds at most one slot per bot of the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from gateway.core.bots import RESERVED_NAMES, BotTable, default_bot
from gateway.core.telegram_settings import TelegramSettings

NONE = "none"  # no bot known yet (refused before its bot was found)
UNKNOWN = "unknown"  # an id the bot table does not hold
OTHER = "other"  # a bot past METRICS_BOT_LABEL_LIMIT
RESERVED = frozenset({NONE, UNKNOWN, OTHER})
assert RESERVED == RESERVED_NAMES  # no bot may be named like one of them
DEFAULT_LIMIT = 100

T = TypeVar("T")


class TableSource(Protocol):
    """Anything with the current bot table (``gateway.runtime.bots.BotRegistry``)."""

    @property
    def table(self) -> BotTable: ...


class _Fixed:
    def __init__(self, table: BotTable) -> None:
        self.table = table


class BotLabels:
    """The ``bot`` label of a bot id, following a table source (``follow``)."""

    def __init__(self, limit: int = DEFAULT_LIMIT, table: BotTable | None = None) -> None:
        if limit < 0:
            raise ValueError("the bot label limit must be >= 0")
        self.limit = limit
        self._source: TableSource = _Fixed(table if table is not None else BotTable())
        self._table: BotTable | None = None
        self._names: dict[int, str] = {}
        self.generation = 0  # grows with every table seen: PerBot caches compare it

    def follow(self, source: TableSource) -> None:
        """Label by ``source.table`` from now on (a registry: read at every lookup)."""
        self._source = source

    def use(self, table: BotTable) -> None:
        """Label by a fixed table (the settings' default bot, tests)."""
        self._source = _Fixed(table)

    def check(self) -> int:
        """The generation of the labels: looks at the source's table first."""
        table = self._source.table
        if table is not self._table:
            self._table = table
            self._names = {b.bot_id: b.name for b in table.bots[: self.limit]}
            self._names.update((b.bot_id, OTHER) for b in table.bots[self.limit :])
            self.generation += 1
        return self.generation

    def label(self, bot_id: int | None) -> str:
        """The label of ``bot_id`` (None: no bot known yet)."""
        self.check()
        if bot_id is None:
            return NONE
        return self._names.get(bot_id, UNKNOWN)

    def known(self, bot_id: int) -> bool:
        """Does the current table hold ``bot_id``?"""
        self.check()
        return bot_id in self._names


def settings_table(tg: TelegramSettings) -> BotTable:
    """``TELEGRAM_BOT_TOKEN``'s bot alone: what a process labels by until its role follows
    a registry (``BotLabels.follow``); empty without a token."""
    token = tg.token if tg.telegram_bot_token is not None else None
    bot = default_bot(token)
    return BotTable.of([] if bot is None else [bot])


class PerBot(Generic[T]):
    """One ``make(label)`` object per label, found by bot id (see the module docstring)."""

    def __init__(self, labels: BotLabels, make: Callable[[str], T]) -> None:
        self._labels = labels
        self._make = make
        self._by_label: dict[str, T] = {}
        self._by_id: dict[int | None, T] = {}
        self._generation = -1

    def __call__(self, bot_id: int | None) -> T:
        labels = self._labels
        if labels.check() != self._generation:
            self._by_id.clear()
            self._generation = labels.generation
        got = self._by_id.get(bot_id)
        if got is not None:
            return got
        label = labels.label(bot_id)
        got = self._by_label.get(label)
        if got is None:
            got = self._by_label[label] = self._make(label)
        if bot_id is None or labels.known(bot_id):
            self._by_id[bot_id] = got
        return got

    def labels(self) -> list[str]:
        """The labels made so far (tests, docs)."""
        return list(self._by_label)
