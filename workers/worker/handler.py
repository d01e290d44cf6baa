"""The update worker: updates stream → bot commands (aiogram) or the pipeline → outbound."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from aiogram import Dispatcher, Router
from aiogram.dispatcher.event.bases import UNHANDLED
from aiogram.fsm.storage.base import BaseStorage
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.types import CallbackQuery, Message, TelegramObject, Update
from pydantic import ValidationError

from gateway.core.contracts import EnvelopeError, Reason, UpdateEntry
from gateway.core.drafts import Draft
from gateway.core.errors import (
    ReplyShapeError,
)
from gateway.core.replies import NoReplyContent, parse_reply, reply_entries
from gateway.core.status_urls import reply_status_url, with_status_url
from gateway.core.tokens import Route, sign_route
from gateway.runtime.batching import Command
from gateway.runtime.bots import MISS_REFRESH
from gateway.runtime.consumer import (
    Ack,
    Dead,
    Fence,
    Item,
    Marker,
    Outcome,
    Publish,
    Retry,
)
from gateway.runtime.pause import PAUSE_POLL
from gateway.runtime.routing import partitions_of
from workers.worker.adapter import UnusableUpdate, business_chat
from workers.worker.bots import WorkerBots
from workers.worker.commands import commands_router
from workers.worker.context import WorkerContext, WorkerServices
from workers.worker.events import pipeline_message
from workers.worker.files import with_files
from workers.worker.submit import bad_reply, submit
from workers.worker.triage import blocking_command, plain_message
from workers.worker.typing_indicator import start_typing, stop_typing

log = logging.getLogger(__name__)

PAUSED = "paused"  # the memo of a paused update's Retry
UNKNOWN_ONCE = "unknown bot, asked once"  # the memo of an update whose bot was not found


def pipeline_router() -> Router:
    """The fallback: every message, edit and button press goes to the pipeline, and so do
    business chats' messages and the events (``events.py``: what is sent, and when)."""
    router = Router(name="tg-gateway-pipeline")

    async def to_pipeline(event: TelegramObject, gw: WorkerContext) -> Outcome:
        return await forward(gw)

    for observer in (router.business_message, router.edited_business_message):
        observer.register(to_pipeline)
    for observer in (router.my_chat_member, router.message_reaction, router.business_connection):
        observer.register(to_pipeline)

    @router.message()
    async def on_message(message: Message, gw: WorkerContext) -> Outcome:
        return await forward(gw)

    @router.edited_message()
    async def on_edit(message: Message, gw: WorkerContext) -> Outcome:
        return await forward(gw)

    @router.callback_query()
    async def on_callback(query: CallbackQuery, gw: WorkerContext) -> Outcome:
        # Stop the button's spinner first; it times out on the user's side otherwise.
        # (Once: not again at each try while the pipeline is paused.)
        if gw.retries == 0 or not await gw.services.pause.paused():
            await gw.send(
                "answerCallbackQuery",
                {"callback_query_id": query.id},
                origin="gateway",
                key="cbq",
                ttl=60.0,
                now=True,
            )
        return await forward(gw)

    return router


def build_dispatcher(user_routers: list[Router], storage: BaseStorage | None = None) -> Dispatcher:
    # aiogram's FSM is for routers of the user's (``storage``: see fsm_storage); ours are
    # stateless and skip its per-update middleware.
    if storage is None:
        storage = MemoryStorage()  # never used without user routers (FSM disabled)
    dp = Dispatcher(storage=storage, disable_fsm=not user_routers)
    dp.include_router(commands_router())
    for router in user_routers:
        dp.include_router(router)
    dp.include_router(pipeline_router())
    return dp


async def forward(gw: WorkerContext) -> Outcome:
    """Hand the update to the pipeline; while it is away, ``Retry`` (the lane tries again
    after the backoff) until ``PIPELINE_RETRY_SECONDS`` since the first try."""
    s, bot_id = gw.services, gw.bot.bot_id
    try:
        message = pipeline_message(
            gw.entry.update,
            bot_id,
            deep_link=gw.start_param,
            contact_status=s.options.contact_status,
        )
    except UnusableUpdate as exc:
        return Dead(Reason.INVALID_ENTRY, str(exc))
    if message is None:
        s.count("unhandled")
        return Ack()
    message = with_files(message, gw.entry.update, s.options.files, bot_id, time.time())
    bcid = message.business_connection_id
    route = Route(
        bot_id=bot_id,
        chat_id=message.chat_id,
        reply_to=message.reply_to,
        update_id=gw.entry.update_id,
        expires_at=0,
        received_at=gw.entry.received_at,
        business_connection_id=bcid,
    )
    callback_url = None
    if gw.bot.delivery_secret is not None:  # the bot's own, else DELIVERY_SECRET
        token = sign_route(
            gw.bot.delivery_secret,
            bot_id=bot_id,
            chat_id=message.chat_id,
            reply_to=message.reply_to,
            update_id=gw.entry.update_id,
            ttl=s.options.token_ttl,
            received_at=gw.entry.received_at,
            business_connection_id=bcid,
        )
        callback_url = f"{s.options.gateway_public_url}/api/delivery/{token}"
    if gw.already_handed:
        # Handled before (a redelivery, a copy of the entry): do not POST twice.
        s.count("already_handed")
        return Ack()
    if await s.pause.paused():
        # An operator holds the pipeline: wait in place (no delivery counted, the chat's
        # order kept); the retry budget starts again once the pause ends.
        s.count("paused")
        return Retry(PAUSE_POLL, "pipeline paused by an operator", memo=PAUSED)
    key = idempotency_key(bot_id, gw.entry.update_id)
    # One typing indicator across the retries, until the reply is stored (or its cap);
    # none for an event or a deep link (``quiet``).
    if not message.quiet:
        start_typing(gw, key)
    try:
        outcome, body = await submit(gw, message, callback_url, key)
    except BaseException:
        stop_typing(s, key)
        raise
    if isinstance(outcome, Retry):
        return outcome
    if outcome is not None:
        stop_typing(s, key)
        return outcome
    s.count("forwarded")
    gw.handed = True
    if body:
        try:
            replied = _deliver_body(gw, route, body)
        except ReplyShapeError as exc:
            stop_typing(s, key)
            return await bad_reply(gw, message, exc)
        if replied:  # the reply goes out with this update's finish
            stop_typing(s, key)
    return Ack()  # no reply yet: the indicator goes on until the callback brings it


def _deliver_body(gw: WorkerContext, route: Route, body: dict[str, Any]) -> bool:
    """A reply in the pipeline's answer becomes the same entries as a callback's; they
    are published with the update's acknowledgement. False: no reply in it (it comes on
    the callback). ``ReplyShapeError`` when the body is unusable (bad attachments, nested
    too deep, ...)."""
    try:
        reply = parse_reply(body, gw.services.options.reply_fields)
    except NoReplyContent:
        return False  # e.g. {"status": "accepted"}: the reply comes on the callback
    if isinstance(reply, Draft):  # text so far is for the callback: the final comes there
        log.info("update %s: a draft in the pipeline's answer is not shown", route.update_id)
        return False
    status_url = reply_status_url(body, gw.services.options.status_urls)  # ReplyShapeError
    entries = reply_entries(route, reply, origin="pipeline", ttl=gw.services.options.outbound_ttl)
    gw.outbox.extend(with_status_url(entries, status_url))
    return True


def budget_since(item: Item) -> float:
    """When the update's pipeline retry budget started: its first try in the lane, or
    the first try after the pipeline's pause (0: now)."""
    if item.memo is PAUSED:
        return 0.0
    return item.memo if isinstance(item.memo, float) else item.since


def idempotency_key(bot_id: int, update_id: int) -> str:
    """The ``Idempotency-Key`` of an update's pipeline call, and its handed marker's name."""
    return f"tg-{bot_id}-{update_id}"


class UpdateHandler:
    """Turns one updates-stream entry into an outcome for the consumer.

    Redis work per update: one call before dispatch (was it handed before? the blocked
    mark) and the consumer's finish (replies, handed marker, ack); both are coalesced with
    the other chats' calls of the moment.

    With ``direct`` (no routers of the user's), a ``plain_message`` goes straight to
    ``forward``, which is where aiogram would route it: building and dispatching its
    ``Update`` model cost more than everything else the worker does (bench/workers.py).

    Each entry is handled as its own bot (``UpdateEntry.bot_id``, ``bots``): an entry of
    a bot the deployment does not serve is dead-lettered ``unknown_bot``.
    """

    def __init__(
        self,
        services: WorkerServices,
        bots: WorkerBots,
        dispatcher: Dispatcher,
        direct: bool = False,
    ) -> None:
        self.services = services
        self.bots = bots
        self.dp = dispatcher
        self.direct = direct
        keys = services.keys
        self._partition = partitions_of(keys.all_updates())

    async def __call__(self, item: Item, fence: Fence) -> Outcome:
        try:
            entry = UpdateEntry.from_fields(item.fields)
        except EnvelopeError as exc:
            return Dead(Reason.INVALID_ENTRY, str(exc))
        s = self.services
        wb = await self.bots.get(entry.bot_id)
        if wb is None and item.memo is not UNKNOWN_ONCE:
            # Asked once more after the registry's next read, as the sender does: a bot
            # added a moment ago, just after another miss had the registry read its
            # sources, is not dead-lettered.
            why = f"bot {entry.bot_id} unknown: asked again after the registry's next read"
            return Retry(MISS_REFRESH, why, memo=UNKNOWN_ONCE)
        if wb is None:
            s.count("unknown_bot")
            return Dead(Reason.UNKNOWN_BOT, f"bot {entry.bot_id} is not served here")
        update: Update | None = None
        if not (self.direct and plain_message(entry.update)):
            try:
                update = Update.model_validate(entry.update, context={"bot": wb.bot})
            except ValidationError as exc:
                errors = exc.error_count()
                return Dead(Reason.INVALID_ENTRY, f"not a Telegram Update: {errors} errors")
        chat_id = entry.chat_id if entry.chat_id is not None else 0
        handed = s.keys.handed(
            self._partition.get(item.stream, 0), idempotency_key(wb.bot_id, entry.update_id)
        )
        commands: list[Command] = [("EXISTS", handed)]
        blocking = blocking_command(s.keys, wb.bot_id, entry.update, chat_id)
        if blocking is not None:
            commands.append(blocking)
        for reply in (replies := await s.calls.run(*commands)):
            if isinstance(reply, Exception):
                raise reply  # a RedisError: retried in place, not counted as a delivery
        gw = WorkerContext(
            services=s,
            bot=wb,
            entry=entry,
            chat_id=chat_id,
            fence=fence,
            retries=item.retries,
            since=budget_since(item),
            already_handed=bool(replies[0]),
            business_connection_id=business_chat(entry.update),
        )
        if update is None:
            result: Any = await forward(gw)
        else:
            result = await self.dp.feed_update(wb.bot, update, gw=gw)
        outbox = tuple(Publish(s.outbound_stream(e), e.to_fields()) for e in gw.outbox)
        if isinstance(result, Retry):
            return result  # the pipeline is away: the lane tries the update again later
        if isinstance(result, Dead):
            # e.g. the apology: it goes out in the finish that dead-letters the update
            return dataclasses.replace(result, effects=(*result.effects, *outbox))
        if result is UNHANDLED:
            s.metrics.for_bot(entry.bot_id).updates["no_reply"].inc()
            s.count("unhandled")
            log.info(
                "update %s (%s) not handled; acknowledged",
                entry.update_id,
                next((k for k in entry.update if k != "update_id"), "?"),
                extra={"update_id": entry.update_id},
            )
        elif not isinstance(result, Ack):
            s.metrics.for_bot(entry.bot_id).command(gw.command)
            s.count("handled")
        else:
            s.metrics.for_bot(entry.bot_id).updates["replied" if outbox else "no_reply"].inc()
        marker = (Marker(handed, s.options.handed_ttl),) if gw.handed else ()
        return Ack((*outbox, *marker))
