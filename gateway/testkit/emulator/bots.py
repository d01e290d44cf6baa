"""The bots one emulator serves: each an ``EmulatorCore`` of its own (chats, updates,
webhook, limits, faults, files), found by token for the Bot API and by id or username for
the user side."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Literal

from gateway.core.errors import GatewayError
from gateway.testkit.emulator.core import EmulatorCore, token_bot_id
from gateway.testkit.emulator.limits import EmulatorLimits


class UnknownBotError(GatewayError, LookupError):
    """The user side named a bot this emulator does not serve."""


# (token, username, name, limits) -> a new bot
BotFactory = Callable[[str, str, str, EmulatorLimits | None], EmulatorCore]
SAME: Literal["same"] = "same"  # a new bot's limits: the first bot's


class BotDirectory:
    """The served bots in the order they were added; the first is the default one.

    Use from the event loop's thread only."""

    def __init__(self, first: EmulatorCore, factory: BotFactory) -> None:
        self._factory = factory
        self._by_id: dict[int, EmulatorCore] = {first.bot_id: first}
        self._by_token: dict[str, EmulatorCore] = {first.token: first}
        self.running = False

    @property
    def first(self) -> EmulatorCore:
        return next(iter(self._by_id.values()))

    def __iter__(self) -> Iterator[EmulatorCore]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def add(
        self,
        token: str,
        username: str | None = None,
        name: str | None = None,
        limits: EmulatorLimits | Literal["same"] | None = SAME,
    ) -> EmulatorCore:
        """Serve one more bot (``limits``: the first bot's unless given; None: none
        enforced); the same token again answers the bot already served. ValueError for a
        malformed token or a bot id already served with another token."""
        bot_id = token_bot_id(token)
        known = self._by_id.get(bot_id)
        if known is not None:
            if known.token != token:
                raise ValueError(f"bot {bot_id} is already served (with another token)")
            return known
        own = self.first.state.limits if limits == SAME else limits
        core = self._factory(token, username or f"bot{bot_id}_bot", name or f"Bot {bot_id}", own)
        self._by_id[bot_id] = core
        self._by_token[token] = core
        if self.running:
            core.open()
        return core

    def for_token(self, token: str) -> EmulatorCore | None:
        """The bot a Bot API call's token names; None answers 401 as Telegram does."""
        return self._by_token.get(token)

    def get(self, ref: int | str | None) -> EmulatorCore:
        """A bot by id, ``@username``/username or token; None is the first bot."""
        if ref is None or ref == "":
            return self.first
        if isinstance(ref, int) or ref.isdigit():
            found = self._by_id.get(int(ref))
        elif ":" in ref:
            found = self._by_token.get(ref)
        else:
            name = ref.removeprefix("@").lower()
            found = next((b for b in self._by_id.values() if b.username.lower() == name), None)
        if found is None:
            served = ", ".join(str(bot_id) for bot_id in list(self._by_id)[:10])
            raise UnknownBotError(f"unknown bot {ref!r} (served: {served})")
        return found

    def rotate_token(self, ref: int | str, token: str | None = None) -> str:
        """Give a bot a new token (``bots rotate-token`` after BotFather's /revoke): the old
        one answers 401 from now on, the bot keeps its state. Returns the new token."""
        core = self.get(ref)
        new = token or f"{core.bot_id}:{secrets.token_urlsafe(26)[:35]}"
        if token_bot_id(new) != core.bot_id:
            raise ValueError(f"the new token must start with the bot's id {core.bot_id}")
        if new != core.token and new in self._by_token:
            raise ValueError("that token is already in use")
        del self._by_token[core.token]
        core.token = new
        self._by_token[new] = core
        return new

    def describe(self) -> list[dict[str, object]]:
        """What ``GET /_emu/bots`` answers: id, username, name (never a token)."""
        return [
            {"id": b.bot_id, "username": b.username, "first_name": b.state.bot["first_name"]}
            for b in self._by_id.values()
        ]

    def start(self) -> None:
        self.running = True
        for core in self:
            core.open()

    async def stop(self) -> None:
        self.running = False
        for core in self:
            await core.close()
