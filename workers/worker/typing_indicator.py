"""The typing indicator while an external pipeline works on an update.

From the update's first POST, "typing…" is sent every ``TYPING_EVERY`` seconds
(Telegram shows a chat action for 5 s), until the first of:

- the pipeline's callback reply is stored: the ingress sets ``Keys.replied`` before it
  adds the reply's entries, and each indicator goes out through the ``TYPING`` script,
  which adds nothing once that mark is set, so no "typing…" follows the reply;
- the pipeline answered with the reply in its body, refused the update, or it was given
  up (dead letter): the handler stops it;
- ``PIPELINE_TYPING_SECONDS`` (the cap) since the update's first try, retries included;
- the update's lane stopping without an outcome (its partition moved): the handler stops
  it; the worker's shutdown stops every one (``stop_all``).

A chat (of one bot) has at most one: a later update of the chat takes it over. Each indicator is an
outbound entry published at once (best effort: one Redis cannot take is skipped).
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from gateway.core.tasks import cancel_and_wait
from gateway.runtime.scripts import TYPING
from workers.worker.context import WorkerContext, WorkerServices

log = logging.getLogger(__name__)

TYPING_EVERY = 4.5  # a chat action shows for up to 5 s


def start_typing(gw: WorkerContext, key: str) -> None:
    """Start the update's indicator (``key``: its idempotency key) unless it runs, the
    pipeline is the embedded one, or the cap has passed since the update's first try."""
    s = gw.services
    cap = s.options.typing_seconds
    if gw.bot.pipeline.name == "embedded" or cap <= 0 or key in s.typing:
        return
    end = (gw.since or time.monotonic()) + cap
    if time.monotonic() >= end:
        return
    chat = (gw.bot.bot_id, gw.chat_id)
    before = s.typing_chats.get(chat)
    if before is not None:
        stop_typing(s, before)  # the chat's later update takes over
    task = asyncio.create_task(_keep_typing(gw, end), name=f"typing {key}")
    s.typing[key] = task
    s.typing_chats[chat] = key
    task.add_done_callback(lambda t: _forget(s, key, chat, t))


def stop_typing(s: WorkerServices, key: str) -> None:
    """Stop the indicator of the update with idempotency key ``key``, if it runs."""
    task = s.typing.pop(key, None)
    if task is not None:
        task.cancel()


async def stop_all(s: WorkerServices) -> None:
    """Stop every indicator (the worker's shutdown) and wait for them to end."""
    await cancel_and_wait(*list(s.typing.values()))


def _forget(s: WorkerServices, key: str, chat: tuple[int, int], task: asyncio.Task[None]) -> None:
    """An ended indicator leaves the registry (unless a newer one holds its place)."""
    if s.typing.get(key) is task:
        del s.typing[key]
    if s.typing_chats.get(chat) == key and key not in s.typing:
        del s.typing_chats[chat]


async def _keep_typing(gw: WorkerContext, end: float) -> None:
    s = gw.services
    sha = s.calls.script(TYPING.source)
    replied = s.keys.replied(gw.bot.bot_id, gw.chat_id, gw.entry.update_id)
    n = 0
    while (left := end - time.monotonic()) > 0:
        entry = gw.outbound(
            "sendChatAction", {"action": "typing"}, origin="gateway", key=f"typing{n}", ttl=5.0
        )
        fields = [x for kv in entry.to_fields().items() for x in kv]
        command = ("EVALSHA", sha, 2, replied, s.outbound_stream(entry), *fields)
        try:
            [added] = await s.calls.run(command)
        except (RedisError, OSError, TimeoutError) as exc:
            added = exc
        if isinstance(added, Exception):
            log.debug("typing indicator skipped: %s", added)
        elif int(added) == 0:
            log.debug("typing for update %s ended: reply stored", gw.entry.update_id)
            return
        n += 1
        await asyncio.sleep(min(TYPING_EVERY, left))
    log.debug("typing for update %s ended: cap reached after %d tries", gw.entry.update_id, n)
