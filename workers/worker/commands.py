"""Bot commands the gateway answers itself (aiogram Router): /start, /help, /status, and
for ``ADMIN_USER_IDS`` /stats and /admin (``workers/worker/admin.py``). A bot of the
registry may bring its own /help text, /start greeting and admins (issue 15).

A ``/start <payload>`` deep link is greeted here too, and then goes on like any message
(the user's routers, then the pipeline, with ``metadata.start_param``): a CRM learns the
campaign, and the user is greeted even while the pipeline is away.

Handlers reply through ``WorkerContext.reply`` (the outbound stream, so the sender's
rate limits apply) instead of calling the Bot API directly. Plug your own aiogram routers
in with ``WORKER_ROUTERS=package.module:router``; they run before the pipeline fallback.
"""

from __future__ import annotations

import importlib

from aiogram import Router
from aiogram.dispatcher.event.bases import SkipHandler
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import Message

from workers.worker.admin import admin_router
from workers.worker.context import WorkerContext
from workers.worker.events import start_param

HELP_TEXT = (
    "I pass your messages to our support team and bring their answers back here.\n\n"
    "Just write your question. Commands:\n"
    "/start - greeting\n"
    "/help - this help\n"
    "/status - is the service up?"
)


GREETING = (
    "Hello, {name}! I am the support bot. Write your question and our team will answer "
    "here. /help lists what I can do."
)


def greeting_text(template: str | None, name: str) -> str:
    """/start's greeting: the bot's own (``greeting``; ``{name}`` in it becomes the
    user's first name) or ``GREETING``. Only ``{name}`` is replaced: other braces stay."""
    return (template or GREETING).replace("{name}", name)


def commands_router() -> Router:
    router = Router(name="tg-gateway-commands")

    @router.message(CommandStart())
    async def start(message: Message, gw: WorkerContext, command: CommandObject) -> None:
        gw.command = "start"
        name = message.from_user.first_name if message.from_user else "there"
        greeting = greeting_text(gw.bot.spec.greeting, name)
        payload = start_param(command.args)
        if payload is None:
            await gw.reply(greeting, reply_to=message.message_id)
            return
        # A deep link: greeted at once (once: not again at each try while the pipeline is
        # away), then on to the pipeline fallback with the payload.
        if gw.retries == 0:
            await gw.reply(greeting, reply_to=message.message_id, now=True)
        gw.start_param = payload
        raise SkipHandler

    @router.message(Command("help"))
    async def help_(message: Message, gw: WorkerContext) -> None:
        gw.command = "help"
        await gw.reply(gw.bot.spec.help_text or HELP_TEXT, reply_to=message.message_id)

    @router.message(Command("status"))
    async def status(message: Message, gw: WorkerContext) -> None:
        gw.command = "status"
        user_id = message.from_user.id if message.from_user else 0
        await gw.reply(
            await gw.status_text(detailed=gw.is_admin(user_id)), reply_to=message.message_id
        )

    router.include_router(admin_router())
    return router


def load_routers(specs: list[str]) -> list[Router]:
    """Import ``module:attribute`` routers (or factories returning one)."""
    routers: list[Router] = []
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        obj = getattr(importlib.import_module(module_name), attr or "router")
        router = obj() if callable(obj) and not isinstance(obj, Router) else obj
        if not isinstance(router, Router):
            raise TypeError(f"{spec} is not an aiogram Router")
        routers.append(router)
    return routers
