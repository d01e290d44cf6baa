"""How the lanes of one bot wait for its send budget (``RateLimiter.acquire``).

A lane whose chat has no budget sleeps on its own. Lanes waiting only for the global
budget queue on one lock (FIFO), so one of them asks Redis at a time instead of all of
them at every tick. A lane that comes while another's counted call is out joins that
queue at once instead of asking too: a sender's start (or a burst of new chats) would
otherwise put hundreds of calls in flight together, and the fence and the Bot API calls
of the first grants would wait behind them: measured, 180 ms late at a fresh sender's
start, which a late arrival's push (``workers.sender.arrivals``) then has to make up.
During the bot's 429 pause none queues: each is answered ``PAUSED`` at once (from the
pause kept in process), so it gives its room up without waiting for a turn.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from workers.sender.limits import PAUSED

TryAcquire = Callable[[int | str, bool], Awaitable[tuple[float, float]]]


class BudgetQueue:
    """``acquire``: the waiting policy over ``try_acquire`` (one budget call: (global
    wait, chat wait), (0, 0) when taken) and ``pause_left`` (the bot's 429 pause)."""

    def __init__(self, try_acquire: TryAcquire, pause_left: Callable[[], float]) -> None:
        self._try = try_acquire
        self._pause_left = pause_left
        self._lock = asyncio.Lock()
        self._asking = 0  # counted calls out that did not come through the queue

    async def acquire(self, chat_id: int | str, counts: bool) -> str:
        """Return once one send to ``chat_id`` may go (its budget is taken): the limit that
        made it wait first (``none``, ``global``, ``chat`` or ``group``, for the metrics);
        or at once ``PAUSED`` (nothing taken) while the bot as a whole waits out a 429:
        the caller waits it out where it holds up no other bot."""
        scope, first = "none", True
        while True:
            herd = self._asking or self._lock.locked()
            if first and counts and herd and not self._pause_left():
                wait_g, scope = 0.0, "global"  # others are asking: queue up behind them
            else:
                self._asking += counts
                try:
                    wait_g, wait_c = await self._try(chat_id, counts)
                finally:
                    self._asking -= counts
                if wait_g == 0 and wait_c == 0:
                    return scope
                if wait_g > wait_c and self._pause_left():
                    return PAUSED
                if wait_c >= wait_g:
                    if scope == "none":
                        scope = "group" if isinstance(chat_id, str) or chat_id < 0 else "chat"
                    await asyncio.sleep(wait_c)  # this chat's own wait: others go on
                    continue
                if scope == "none":
                    scope = "global"
            # The wait counts from when it was told, not from this lane's turn at the
            # queue: after a 429's pause the lanes behind the first go one by one at once,
            # instead of each sleeping the whole pause again.
            due, first = time.monotonic() + wait_g, False
            async with self._lock:  # only the global budget is missing: queue up
                while True:
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    wait_g, wait_c = await self._try(chat_id, counts)
                    if wait_g == 0 and wait_c == 0:
                        return scope
                    if wait_c >= wait_g or self._pause_left():
                        break  # the chat's own wait, or the bot's 429 pause (see above)
                    due = time.monotonic() + wait_g
