"""The update worker: updates stream → bot commands (aiogram) or the pipeline → outbound."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiogram import Bot, Dispatcher, Router
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.types import CallbackQuery, Message, Update
from pydantic import ValidationError
from redis.exceptions import RedisError

from gateway.contracts import EnvelopeError, Reason, UpdateEntry, partition_for
from gateway.errors import (
    PipelineRejected,
    PipelineUnavailable,
    RedisUnavailable,
    ReplyShapeError,
)
from gateway.poller import backoff
from gateway.replies import parse_reply, reply_entries
from gateway.streams import publish_outbound
from gateway.tokens import Route, sign_route
from workers.adapter import PipelineMessage, adapt
from workers.commands import commands_router
from workers.consumer import Ack, Dead, LeaseLost, Outcome, lease_valid
from workers.context import WorkerContext, WorkerServices

log = logging.getLogger(__name__)

TYPING_EVERY = 4.5  # a chat action shows for up to 5 s


def pipeline_router() -> Router:
    """The fallback: every message, edit and button press goes to the pipeline."""
    router = Router(name="tg-gateway-pipeline")

    @router.message()
    async def on_message(message: Message, gw: WorkerContext) -> Outcome:
        return await forward(gw)

    @router.edited_message()
    async def on_edit(message: Message, gw: WorkerContext) -> Outcome:
        return await forward(gw)

    @router.callback_query()
    async def on_callback(query: CallbackQuery, gw: WorkerContext) -> Outcome:
        # Stop the button's spinner first; it times out on the user's side otherwise.
        await gw.send(
            "answerCallbackQuery",
            {"callback_query_id": query.id},
            origin="gateway",
            key="cbq",
            ttl=60.0,
        )
        return await forward(gw)

    return router


def build_dispatcher(user_routers: list[Router]) -> Dispatcher:
    dp = Dispatcher()
    dp.include_router(commands_router())
    for router in user_routers:
        dp.include_router(router)
    dp.include_router(pipeline_router())
    return dp


async def forward(gw: WorkerContext) -> Outcome:
    """Hand the update to the pipeline, retrying transient failures for a bounded time."""
    s = gw.services
    message = adapt(gw.entry.update, s.bot_id)
    if message is None:
        s.count("unhandled")
        return Ack()
    route = Route(
        bot_id=s.bot_id,
        chat_id=message.chat_id,
        reply_to=message.reply_to,
        update_id=gw.entry.update_id,
        expires_at=0,
    )
    callback_url = None
    if s.delivery_secret is not None:
        token = sign_route(
            s.delivery_secret,
            bot_id=s.bot_id,
            chat_id=message.chat_id,
            reply_to=message.reply_to,
            update_id=gw.entry.update_id,
            ttl=s.token_ttl,
        )
        callback_url = f"{s.gateway_public_url}/api/delivery/{token}"
    key = f"tg-{s.bot_id}-{gw.entry.update_id}"
    handed = s.keys.handed(partition_for(message.chat_id, s.keys.partitions), key)
    if await s.redis.exists(handed):
        # Redelivered after the pipeline took it (a crash before XACK): do not POST twice.
        s.count("already_handed")
        return Ack()
    started = time.monotonic()
    attempt = 0
    typing_task = asyncio.create_task(_keep_typing(gw)) if s.pipeline.name != "embedded" else None
    try:
        while True:
            await s.breaker.ready()
            if not lease_valid.get()():
                raise LeaseLost  # another worker owns this chat's partition now
            try:
                body = await s.pipeline.submit(message, callback_url, key)
                s.breaker.success()
                break
            except PipelineRejected as exc:
                s.breaker.success()  # it answered: up, even if it refused this one
                s.count("pipeline_rejected")
                await _apologise(gw, message)
                return Dead(Reason.PIPELINE_REJECTED, str(exc))
            except PipelineUnavailable as exc:
                s.breaker.failure()
                elapsed = time.monotonic() - started
                delay = backoff(attempt, base=0.5, cap=15.0)
                attempt += 1
                if elapsed + delay > s.retry_seconds:
                    s.count("pipeline_unavailable")
                    await _apologise(gw, message)
                    return Dead(
                        Reason.PIPELINE_UNAVAILABLE,
                        f"{exc} (gave up after {attempt} attempts, {elapsed:.0f}s)",
                    )
                log.warning(
                    "pipeline unavailable for update %s: %s; retry in %.1fs",
                    gw.entry.update_id,
                    exc,
                    delay,
                    extra={"update_id": gw.entry.update_id},
                )
                if s.delay_notice and elapsed >= s.delay_notice_after:
                    await _notify_delay(gw, message)
                await asyncio.sleep(delay)
    finally:
        if typing_task is not None:
            typing_task.cancel()
    s.count("forwarded")
    if body:
        await _deliver_body(gw, route, body)
    await s.redis.set(handed, "1", ex=s.handed_ttl)
    return Ack()


async def _notify_delay(gw: WorkerContext, message: PipelineMessage) -> None:
    """At most one "we are delayed" note per chat per outage (shared across workers)."""
    s = gw.services
    marker = s.keys.delay_notice(s.bot_id, message.chat_id)
    if await s.redis.set(marker, "1", nx=True, ex=int(s.delay_notice_window)):
        await gw.reply(s.delay_notice, origin="gateway", key="delayed")


async def _deliver_body(gw: WorkerContext, route: Route, body: dict[str, Any]) -> None:
    """A reply in the pipeline's answer goes out through the same path as callbacks."""
    try:
        reply = parse_reply(body, gw.services.reply_fields)
    except ReplyShapeError:
        return  # e.g. {"status": "accepted"}: the reply comes on the callback
    s = gw.services
    entries = reply_entries(route, reply, origin="pipeline", ttl=s.outbound_ttl)
    await publish_outbound(s.redis, s.keys, entries)
    gw.sent.extend(e.reply_id for e in entries)


async def _apologise(gw: WorkerContext, message: PipelineMessage) -> None:
    """One short note to the user; the reply id makes a redelivery not send it again."""
    await gw.reply(
        gw.services.apology_text, reply_to=message.reply_to, origin="gateway", key="apology"
    )


async def _keep_typing(gw: WorkerContext) -> None:
    """Best effort: a typing indicator that cannot be queued (Redis away) is skipped."""
    n = 0
    while True:
        try:
            await gw.send(
                "sendChatAction", {"action": "typing"}, origin="gateway", key=f"typing{n}", ttl=5.0
            )
        except (RedisUnavailable, RedisError, OSError) as exc:
            log.debug("typing indicator skipped: %s", exc)
        n += 1
        await asyncio.sleep(TYPING_EVERY)


class UpdateHandler:
    """Turns one updates-stream entry into an outcome for the consumer."""

    async def _track_blocking(self, entry: UpdateEntry, chat_id: int) -> None:
        """Mark a chat that blocked the bot (replies dead-letter at once); clear it when
        the user unblocks or writes again."""
        s = self.services
        key = s.keys.blocked_chat(s.bot_id, chat_id)
        member = entry.update.get("my_chat_member")
        if isinstance(member, dict):
            status = (member.get("new_chat_member") or {}).get("status")
            if status in ("kicked", "left"):
                await s.redis.set(key, "1", ex=30 * 86_400)
            elif status is not None:
                await s.redis.delete(key)
        elif chat_id > 0 and ("message" in entry.update or "callback_query" in entry.update):
            await s.redis.delete(key)

    def __init__(self, services: WorkerServices, bot: Bot, dispatcher: Dispatcher) -> None:
        self.services = services
        self.bot = bot
        self.dp = dispatcher

    async def __call__(
        self, stream: str, entry_id: str, fields: dict[bytes, bytes], deliveries: int
    ) -> Outcome:
        try:
            entry = UpdateEntry.from_fields(fields)
        except EnvelopeError as exc:
            return Dead(Reason.INVALID_ENTRY, str(exc))
        try:
            update = Update.model_validate(entry.update, context={"bot": self.bot})
        except ValidationError as exc:
            return Dead(Reason.INVALID_ENTRY, f"not a Telegram Update: {exc.error_count()} errors")
        chat_id = entry.chat_id if entry.chat_id is not None else 0
        await self._track_blocking(entry, chat_id)
        gw = WorkerContext(services=self.services, entry=entry, chat_id=chat_id)
        result = await self.dp.feed_update(self.bot, update, gw=gw)
        if result is UNHANDLED:
            self.services.count("unhandled")
            log.info(
                "update %s (%s) not handled; acknowledged",
                entry.update_id,
                next((k for k in entry.update if k != "update_id"), "?"),
                extra={"update_id": entry.update_id},
            )
            return Ack()
        if isinstance(result, Dead | Ack):
            return result
        self.services.count("handled")
        return Ack()
