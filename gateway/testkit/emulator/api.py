"""The Bot API method registry: canonical names, case-insensitive lookup, handler signature."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.testkit.emulator.params import Params

if TYPE_CHECKING:
    from gateway.testkit.emulator.core import EmulatorCore

Handler = Callable[["EmulatorCore", Params], Awaitable[Any]]
METHODS: dict[str, tuple[str, Handler]] = {}


@dataclass(frozen=True)
class Described:
    """A result that Telegram answers together with a ``description`` (setWebhook & co)."""

    result: Any
    description: str


def method(name: str) -> Callable[[Handler], Handler]:
    """Register a handler under its canonical Bot API name."""

    def register(handler: Handler) -> Handler:
        METHODS[name.lower()] = (name, handler)
        return handler

    return register


def lookup(name: str) -> tuple[str, Handler] | None:
    """Telegram matches method names case-insensitively."""
    return METHODS.get(name.lower())
