"""Telegram's send limits as sliding windows over send timestamps (pure, clock injected)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SECOND = 1.0
MINUTE = 60.0


@dataclass(frozen=True)
class EmulatorLimits:
    """Limits enforced on message-sending calls; a call exceeding any of them gets a 429."""

    global_per_second: int = 30
    chat_per_second: int = 1
    group_per_minute: int = 20
    paid_per_second: int = 1000  # sends with allow_paid_broadcast (Bot API 7.11)


def is_group(chat_id: int) -> bool:
    """Groups and supergroups have negative ids."""
    return chat_id < 0


def _trim(window: deque[float], now: float, length: float) -> None:
    """Drop timestamps that fell out of the trailing window ``(now - length, now]``."""
    edge = now - length
    while window and window[0] <= edge:
        window.popleft()


def _wait(window: deque[float], limit: int, now: float, length: float) -> float:
    """Seconds until one more send fits into the (trimmed) window; 0 when it fits now."""
    if len(window) < limit:
        return 0.0
    if limit <= 0:
        return length
    # The (len - limit)-th oldest send must leave before the window has room again.
    return window[len(window) - limit] + length - now


class SendWindows:
    """Trailing 1 s global, 1 s per chat and 60 s per group windows of successful sends."""

    def __init__(self, limits: EmulatorLimits | None) -> None:
        self.limits = limits
        self._global: deque[float] = deque()
        self._chat: dict[int, deque[float]] = {}
        self._group: dict[int, deque[float]] = {}
        self._recorded = 0
        self.refused: dict[str, int] = {"global": 0, "chat": 0, "group": 0}  # 429s by limit

    def retry_after(self, chat_id: int, now: float, paid: bool = False) -> int | None:
        """``None`` when a send to ``chat_id`` at ``now`` is allowed, else whole seconds to
        wait. A ``paid`` send (``allow_paid_broadcast``) has the higher global limit."""
        limits = self.limits
        if limits is None:
            return None
        per_second = limits.paid_per_second if paid else limits.global_per_second
        windows = [("global", self._global, per_second, SECOND)]
        chat = self._chat.setdefault(chat_id, deque())
        windows.append(("chat", chat, limits.chat_per_second, SECOND))
        if is_group(chat_id):
            group = self._group.setdefault(chat_id, deque())
            windows.append(("group", group, limits.group_per_minute, MINUTE))
        waits = []
        for kind, window, limit, length in windows:
            _trim(window, now, length)
            waits.append((_wait(window, limit, now, length), kind))
        longest, kind = max(waits)
        if longest <= 0:
            return None
        self.refused[kind] += 1
        return max(1, math.ceil(longest))

    def record(self, chat_id: int, now: float) -> None:
        """Remember a successful send (only when limits are enforced)."""
        if self.limits is None:
            return
        self._global.append(now)
        self._chat.setdefault(chat_id, deque()).append(now)
        if is_group(chat_id):
            self._group.setdefault(chat_id, deque()).append(now)
        self._recorded += 1
        if self._recorded % 4096 == 0:
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        for table, length in ((self._chat, SECOND), (self._group, MINUTE)):
            for key in list(table):
                _trim(table[key], now, length)
                if not table[key]:
                    del table[key]


def max_in_window(stamps: Sequence[float], length: float) -> int:
    """The most sends inside any trailing window ``(t - length, t]`` ending at a send."""
    ordered = sorted(stamps)
    best = 0
    start = 0
    for end, stamp in enumerate(ordered):
        while ordered[start] <= stamp - length:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass(frozen=True)
class WindowMaxima:
    """Observed peaks of the send log."""

    global_1s: int
    chat_1s: dict[int, int]
    group_60s: dict[int, int]


def window_maxima(sends: Iterable[tuple[int, float]]) -> WindowMaxima:
    """Peaks per window kind from ``(chat_id, monotonic timestamp)`` pairs."""
    every: list[float] = []
    per_chat: dict[int, list[float]] = {}
    for chat_id, stamp in sends:
        every.append(stamp)
        per_chat.setdefault(chat_id, []).append(stamp)
    return WindowMaxima(
        global_1s=max_in_window(every, SECOND),
        chat_1s={chat: max_in_window(ts, SECOND) for chat, ts in per_chat.items()},
        group_60s={
            chat: max_in_window(ts, MINUTE) for chat, ts in per_chat.items() if is_group(chat)
        },
    )
