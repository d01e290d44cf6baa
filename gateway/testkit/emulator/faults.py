"""Injectable failures (5xx, delays, 401/403/429, migrations), mutable while the emulator runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from gateway.testkit.emulator.errors import BLOCKED, ApiError, migrated, too_many_requests


@dataclass
class RawFailure:
    """An answer that is not a Bot API answer: a proxy's HTML page or a bare 5xx JSON."""

    status: int
    html: bool

    @property
    def reason(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"

    def body(self) -> str:
        if self.html:
            return f"<html><body><h1>{self.status} {self.reason}</h1></body></html>"
        return f'{{"ok":false,"error_code":{self.status},"description":"{self.reason}"}}'

    @property
    def content_type(self) -> str:
        return "text/html" if self.html else "application/json"


@dataclass
class _FailRule:
    method: str | None
    remaining: int
    status: int
    html: bool


def _norm(method: str | None) -> str | None:
    return None if method is None else method.lower()


class Faults:
    """Faults the Bot API side applies before answering; every op is also reachable over HTTP."""

    OPS = frozenset(
        {
            "fail_next", "delay", "forbid_chat", "unforbid_chat", "flood_chat", "flood_global",
            "migrate_chat", "unauthorized", "clear",
        }
    )  # fmt: skip

    def __init__(self) -> None:
        self.on_migrate: Callable[[int, int], None] | None = None
        self.clear()

    def clear(self) -> None:
        """Remove every fault."""
        self._fail: list[_FailRule] = []
        self._delay: dict[str | None, float] = {}
        self._delay_next: dict[str | None, list[float]] = {}  # method: [calls left, s]
        self._forbidden: dict[int, str] = {}
        self._flood_chat: dict[int, list[int]] = {}
        self._flood_global: list[int] = [0, 0]
        self._migrated: dict[int, int] = {}
        self._unauthorized = False
        self.floods: list[tuple[int, float]] = []
        """Every injected 429 that fired: (chat_id, epoch seconds when it was answered)."""

    def fail_next(
        self, method: str | None, count: int, status: int = 502, html: bool = True
    ) -> None:
        """The next ``count`` calls of ``method`` (None = any) answer ``status``."""
        self._fail.append(_FailRule(_norm(method), count, status, html))

    def delay(self, method: str | None, seconds: float) -> None:
        """Sleep ``seconds`` before answering ``method`` (None = any); 0 removes the delay."""
        if seconds > 0:
            self._delay[_norm(method)] = seconds
        else:
            self._delay.pop(_norm(method), None)

    def delay_next(self, method: str | None, count: int, seconds: float) -> None:
        """Sleep ``seconds`` before answering the next ``count`` calls of ``method`` (None =
        any): late arrivals, as a cold connection's first requests are."""
        self._delay_next[_norm(method)] = [count, seconds]

    def forbid_chat(self, chat_id: int, description: str = BLOCKED) -> None:
        """Calls aimed at ``chat_id`` answer 403 with ``description``."""
        self._forbidden[chat_id] = description

    def unforbid_chat(self, chat_id: int) -> None:
        self._forbidden.pop(chat_id, None)

    def flood_chat(self, chat_id: int, retry_after: int, count: int = 1) -> None:
        """The next ``count`` sends to ``chat_id`` answer 429 with ``retry_after``."""
        self._flood_chat[chat_id] = [retry_after, count]

    def flood_global(self, retry_after: int, count: int = 1) -> None:
        """The next ``count`` sends to any chat answer 429 with ``retry_after``."""
        self._flood_global = [retry_after, count]

    def migrate_chat(self, old_chat_id: int, new_chat_id: int) -> None:
        """Calls aimed at ``old_chat_id`` answer 400 with ``migrate_to_chat_id``."""
        self._migrated[old_chat_id] = new_chat_id
        if self.on_migrate is not None:
            self.on_migrate(old_chat_id, new_chat_id)

    def unauthorized(self, on: bool = True) -> None:
        """While on, every Bot API call answers 401."""
        self._unauthorized = on

    # --- consulted by the Bot API handlers ---------------------------------------------

    @property
    def is_unauthorized(self) -> bool:
        return self._unauthorized

    def delay_for(self, method: str) -> float:
        """The delay of one call of ``method`` (a ``delay_next`` rule is used up by it)."""
        for key in (method.lower(), None):
            rule = self._delay_next.get(key)
            if rule is not None and rule[0] > 0:
                rule[0] -= 1
                return rule[1]
        return self._delay.get(method.lower(), self._delay.get(None, 0.0))

    def take_failure(self, method: str) -> RawFailure | None:
        """Consume one matching ``fail_next`` rule."""
        name = method.lower()
        for rule in self._fail:
            if rule.remaining > 0 and rule.method in (None, name):
                rule.remaining -= 1
                self._fail = [r for r in self._fail if r.remaining > 0]
                return RawFailure(rule.status, rule.html)
        return None

    def chat_error(self, chat_id: int) -> ApiError | None:
        """403 / migration for any call aimed at ``chat_id``."""
        if chat_id in self._forbidden:
            return ApiError(403, self._forbidden[chat_id])
        if chat_id in self._migrated:
            return migrated(self._migrated[chat_id])
        return None

    def flood_error(self, chat_id: int) -> ApiError | None:
        """Consume one injected 429 for a send to ``chat_id``."""
        chat = self._flood_chat.get(chat_id)
        if chat is not None and chat[1] > 0:
            chat[1] -= 1
            self.floods.append((chat_id, time.time()))
            return too_many_requests(chat[0])
        if self._flood_global[1] > 0:
            self._flood_global[1] -= 1
            self.floods.append((chat_id, time.time()))
            return too_many_requests(self._flood_global[0])
        return None
