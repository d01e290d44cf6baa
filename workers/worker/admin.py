"""The operators' commands (``ADMIN_USER_IDS`` only): ``/stats`` and ``/admin``'s menu.

For anyone else ``/stats`` and ``/admin`` are ordinary messages (they go on to the
pipeline). The menu's buttons carry ``gwadm:<action>[:<reason>:<dead id>]``; who pressed
is checked against ``ADMIN_USER_IDS`` at each press, so a button forwarded to (or forged
by) someone else only gets an answer. Every press is answered (answerCallbackQuery).
Reads are bounded: the dead letters by reason are those of the newest ``DEAD_WINDOW``,
and a requeue moves at most those (ids up to the newest one the operator was shown).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiogram import Router
from aiogram.filters import Command, Filter
from aiogram.types import CallbackQuery, Message

from gateway.core.contracts import Reason
from gateway.core.errors import UsageError
from gateway.runtime import dlq
from gateway.runtime.activity import hour_stats, render_stats
from gateway.runtime.pause import PAUSE_DEFAULT, pause_left, set_paused
from workers.worker.context import WorkerContext

PREFIX = "gwadm:"
DEAD_WINDOW = 1000  # dead letters read per menu view (and requeued per press at most)
READ_TIMEOUT = 10.0  # seconds a menu's or /stats' reads may take
DEAD_ID = re.compile(r"\d{1,20}-\d{1,20}")
REASONS = frozenset(r.value for r in Reason)
NOT_ALLOWED = "Only the bot's operators can use this."

Keyboard = list[list[tuple[str, str]]]


class AdminPress(Filter):
    """A press of one of the menu's buttons (its data starts with ``PREFIX``). A coroutine
    on purpose: aiogram runs a plain callable filter (a magic ``F.data...`` one among
    them) in a thread per call (``asyncio.to_thread``), a thread hop for every press."""

    async def __call__(self, query: CallbackQuery) -> bool:
        return (query.data or "").startswith(PREFIX)


class FromAdmin(Filter):
    """The sender of the message or press is in ``ADMIN_USER_IDS`` (checked now)."""

    async def __call__(self, event: Message | CallbackQuery, gw: WorkerContext) -> bool:
        user = event.from_user
        return user is not None and gw.is_admin(user.id)


def admin_router() -> Router:
    router = Router(name="tg-gateway-admin")

    @router.message(Command("stats"), FromAdmin())
    async def stats(message: Message, gw: WorkerContext) -> None:
        gw.command = "stats"
        await gw.reply(await stats_text(gw), reply_to=message.message_id)

    @router.message(Command("admin"), FromAdmin())
    async def admin(message: Message, gw: WorkerContext) -> None:
        gw.command = "admin"
        text, keyboard = await menu(gw)
        await send_menu(gw, text, keyboard)

    @router.callback_query(AdminPress())
    async def pressed(query: CallbackQuery, gw: WorkerContext) -> None:
        gw.command = "admin"
        user = query.from_user
        if not gw.is_admin(user.id):
            await answer(gw, query, NOT_ALLOWED)  # nothing else: a forwarded or forged button
            return
        await answer(gw, query, await press(gw, (query.data or "")[len(PREFIX) :], user.id))

    return router


async def stats_text(gw: WorkerContext) -> str:
    async with asyncio.timeout(READ_TIMEOUT):
        return render_stats(await hour_stats(gw.services.redis, gw.services.keys))


async def answer(gw: WorkerContext, query: CallbackQuery, text: str) -> None:
    payload = {"callback_query_id": query.id, "text": text[:200]}
    await gw.send("answerCallbackQuery", payload, origin="gateway", key="cbq", ttl=60.0)


async def send_menu(gw: WorkerContext, text: str, keyboard: Keyboard) -> None:
    payload: dict[str, Any] = {"text": text}
    if keyboard:
        payload["reply_markup"] = {
            "inline_keyboard": [
                [{"text": label, "callback_data": PREFIX + data} for label, data in row]
                for row in keyboard
            ]
        }
    await gw.send("sendMessage", payload, origin="command", key="reply")


async def menu(gw: WorkerContext) -> tuple[str, Keyboard]:
    s = gw.services
    async with asyncio.timeout(READ_TIMEOUT):
        left = await pause_left(s.redis, s.keys)
        dead = int(await s.redis.xlen(s.keys.dead))
    if left is None:
        state, toggle = "running", ("Pause the pipeline (1 h)", "pause")
    else:
        state = f"PAUSED for {left // 60} min {left % 60} s more"
        toggle = ("Resume the pipeline", "resume")
    text = f"Operator menu\nPipeline: {state}\nDead letters: {dead}"
    return text, [[("Dead letters by reason", "dlq")], [toggle], [("Stats, last hour", "stats")]]


async def dead_by_reason(gw: WorkerContext) -> tuple[str, Keyboard]:
    s = gw.services
    async with asyncio.timeout(READ_TIMEOUT):
        total = int(await s.redis.xlen(s.keys.dead))
        entries = await dlq.newest(s.redis, s.keys, DEAD_WINDOW)
    if not entries:
        return "No dead letters.", []
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.reason] = counts.get(e.reason, 0) + 1
    scope = "" if len(entries) == total else f" (the newest {len(entries)} of {total})"
    lines = [f"Dead letters by reason{scope}:"]
    lines += [f"{reason}: {n}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    up_to = entries[0].id
    keyboard = [
        [(f"Requeue {reason} ({n})", f"rq:{reason}:{up_to}")]
        for reason, n in sorted(counts.items())
        if reason in REASONS
    ]
    return "\n".join(lines), keyboard


async def chosen(gw: WorkerContext, reason: str, up_to: str) -> list[dlq.DeadEntry]:
    """The dead letters of ``reason`` the operator was shown (ids up to ``up_to``),
    oldest first."""
    s = gw.services
    async with asyncio.timeout(READ_TIMEOUT):
        entries = await dlq.newest(s.redis, s.keys, DEAD_WINDOW, up_to=up_to)
    return [e for e in reversed(entries) if e.reason == reason]


async def press(gw: WorkerContext, action: str, user_id: int) -> str:
    """Do what an operator's button says; the press's answer."""
    s = gw.services
    verb, _, rest = action.partition(":")
    reason, _, up_to = rest.partition(":")
    if verb in ("rq", "rqok") and (reason not in REASONS or not DEAD_ID.fullmatch(up_to)):
        return "Unknown button."
    if verb == "menu":
        await send_menu(gw, *await menu(gw))
        return "Menu"
    if verb == "stats":
        await gw.reply(await stats_text(gw))
        return "Stats"
    if verb == "dlq":
        await send_menu(gw, *await dead_by_reason(gw))
        return "Dead letters"
    if verb == "rq":
        n = len(await chosen(gw, reason, up_to))
        if not n:
            return f"No {reason} dead letters any more."
        text = f"Requeue {n} dead letter(s) with reason {reason} to the streams they came from?"
        keyboard = [[(f"Yes, requeue {n}", f"rqok:{reason}:{up_to}"), ("Cancel", "cancel")]]
        await send_menu(gw, text, keyboard)
        return "Confirm the requeue"
    if verb == "rqok":
        entries = await chosen(gw, reason, up_to)
        try:
            done = await dlq.requeue(s.redis, s.keys, entries)
        except UsageError as exc:
            await gw.reply(f"Nothing requeued: {exc}")
            return "Nothing requeued"
        await gw.reply(f"Requeued {done} dead letter(s) with reason {reason}.")
        return f"Requeued {done}"
    if verb == "cancel":
        return "Cancelled"
    if verb in ("pause", "resume"):
        on = verb == "pause"
        await set_paused(s.redis, s.keys, on, PAUSE_DEFAULT, by=f"admin {user_id}")
        s.pause.known(on)
        await send_menu(gw, *await menu(gw))
        return "Pipeline paused for 1 h" if on else "Pipeline resumed"
    return "Unknown button."
