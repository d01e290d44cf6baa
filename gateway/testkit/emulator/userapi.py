"""The user-side HTTP API under ``/_emu/`` (JSON in, JSON out), mirroring the Python API.

Every route acts as a user of one bot: ``?bot=<id or username>`` names it, the first bot
without it. ``/_emu/bots`` lists the bots (``GET``) and serves one more (``POST {"token",
"username", "name", "limits"}``); ``/_emu/bots/rotate_token`` revokes a bot's token."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.testkit.emulator.bots import SAME, BotDirectory, UnknownBotError
from gateway.testkit.emulator.core import EmulatorCore
from gateway.testkit.emulator.limits import EmulatorLimits

Route = Callable[[web.Request], Awaitable[web.Response]]
UserHandler = Callable[[EmulatorCore, web.Request], Awaitable[Any]]
LEARN_MAX = 1000  # Updates one ``/_emu/learn`` call may name


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON via orjson (integer dict keys become strings)."""
    return web.Response(
        status=status,
        body=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        content_type="application/json",
        headers=headers,
    )


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"bad JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="a JSON object is expected")
    return body


def _guarded(bots: BotDirectory, handler: UserHandler) -> Route:
    """Run ``handler`` for the bot the ``bot`` query parameter names (id or username; the
    first bot without it); its result becomes JSON, an unknown bot 404 and bad arguments
    400 ``{"error": ...}``."""

    async def route(request: web.Request) -> web.Response:
        try:
            result = await handler(bots.get(request.query.get("bot")), request)
        except UnknownBotError as exc:
            return json_response({"error": str(exc)}, 404)
        except (TypeError, ValueError, KeyError, binascii.Error) as exc:
            return json_response({"error": f"{type(exc).__name__}: {exc}"}, 400)
        if isinstance(result, web.Response):
            return result
        return json_response(result)

    return route


def add_user_routes(app: web.Application, bots: BotDirectory) -> None:
    """Register ``/_emu/*`` routes for the served bots (``?bot=`` picks one)."""

    async def send(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.user_send(**await _body(request))

    async def send_file(emu: EmulatorCore, request: web.Request) -> Any:
        args = await _body(request)
        encoded = args.pop("content_b64", None)
        if encoded is not None:
            args["content"] = base64.b64decode(str(encoded), validate=True)
        return emu.user_send_file(**args)

    async def edit(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.user_edit(**await _body(request))

    async def press(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.user_press(**await _body(request))

    async def block(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.user_block(**await _body(request))

    async def unblock(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.user_unblock(**await _body(request))

    async def react(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.user_react(**await _body(request))

    async def business_connect(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.business_connect(**await _body(request))

    async def business_send(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.business_send(**await _body(request))

    async def business_edit(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.business_edit(**await _body(request))

    async def updates(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.push_update(await _body(request))

    async def learn(emu: EmulatorCore, request: web.Request) -> Any:
        raw = (await _body(request)).get("updates")
        if (
            not isinstance(raw, list)
            or len(raw) > LEARN_MAX
            or not all(isinstance(u, dict) for u in raw)
        ):
            raise ValueError(f"'updates' must be a list of at most {LEARN_MAX} Update objects")
        for update in raw:
            emu.learn_update(update)
        return {"learned": len(raw)}

    async def chats(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.add_chat(**await _body(request))

    async def reset(emu: EmulatorCore, request: web.Request) -> Any:
        for core in bots if request.query.get("bot") is None else [emu]:
            EmulatorCore.reset(core)  # not Emulator.reset, which resets every bot
        return {"ok": True}

    async def list_bots(emu: EmulatorCore, request: web.Request) -> Any:
        return bots.describe()

    async def add_bot(emu: EmulatorCore, request: web.Request) -> Any:
        args = await _body(request)
        token = args.pop("token", None)
        if not isinstance(token, str):
            raise ValueError("'token' (<bot id>:<secret>) is required")
        limits = args.pop("limits", SAME)
        if isinstance(limits, dict):
            limits = EmulatorLimits(**limits)
        elif limits not in (None, SAME):
            raise ValueError("'limits' is an object of EmulatorLimits fields, null or 'same'")
        return bots.add(token, **args, limits=limits).state.bot

    async def rotate_token(emu: EmulatorCore, request: web.Request) -> Any:
        token = (await _body(request)).get("token")
        if token is not None and not isinstance(token, str):
            raise ValueError("'token' must be a string")
        return {"token": bots.rotate_token(emu.bot_id, token)}

    async def faults(emu: EmulatorCore, request: web.Request) -> Any:
        args = await _body(request)
        op = str(args.pop("op", ""))
        if op not in emu.faults.OPS:
            raise ValueError(f"unknown fault op {op!r}; one of {sorted(emu.faults.OPS)}")
        getattr(emu.faults, op)(**args)
        return {"ok": True}

    async def clear_faults(emu: EmulatorCore, request: web.Request) -> Any:
        emu.faults.clear()
        return {"ok": True}

    async def messages(emu: EmulatorCore, request: web.Request) -> Any:
        chat_id = int(request.match_info["chat_id"])
        wait = int(request.query.get("wait", "0"))
        if wait <= 0:
            return emu.messages(chat_id)
        timeout = float(request.query.get("timeout", "10"))
        try:
            return await emu.wait_messages(chat_id, wait, timeout)
        except TimeoutError:
            error = f"timed out waiting for {wait} messages"
            return json_response({"error": error, "messages": emu.messages(chat_id)}, 408)

    async def message(emu: EmulatorCore, request: web.Request) -> Any:
        """One message as it is now (edits applied); 404 once deleted (or never sent)."""
        chat_id, message_id = int(request.match_info["chat_id"]), int(request.match_info["mid"])
        found = emu.message(chat_id, message_id)
        return found if found is not None else json_response({"error": "no such message"}, 404)

    async def drafts(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.drafts(int(request.match_info["chat_id"]))

    async def actions(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.chat_actions(int(request.match_info["chat_id"]))

    async def sent(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.sent()

    async def stats(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.stats()

    async def answers(emu: EmulatorCore, request: web.Request) -> Any:
        return emu.callback_answers()

    async def webhook(emu: EmulatorCore, request: web.Request) -> Any:
        return {"info": emu.webhook_info(), "delivery_attempts": emu.delivery_attempts()}

    table: list[tuple[str, str, UserHandler]] = [
        ("GET", "/_emu/bots", list_bots),
        ("POST", "/_emu/bots", add_bot),
        ("POST", "/_emu/bots/rotate_token", rotate_token),
        ("POST", "/_emu/send", send),
        ("POST", "/_emu/send_file", send_file),
        ("POST", "/_emu/edit", edit),
        ("POST", "/_emu/press", press),
        ("POST", "/_emu/block", block),
        ("POST", "/_emu/unblock", unblock),
        ("POST", "/_emu/react", react),
        ("POST", "/_emu/business/connect", business_connect),
        ("POST", "/_emu/business/send", business_send),
        ("POST", "/_emu/business/edit", business_edit),
        ("POST", "/_emu/updates", updates),
        ("POST", "/_emu/chats", chats),
        ("POST", "/_emu/learn", learn),
        ("POST", "/_emu/reset", reset),
        ("POST", "/_emu/faults", faults),
        ("DELETE", "/_emu/faults", clear_faults),
        ("GET", "/_emu/chats/{chat_id}/messages", messages),
        ("GET", "/_emu/chats/{chat_id}/messages/{mid}", message),
        ("GET", "/_emu/chats/{chat_id}/actions", actions),
        ("GET", "/_emu/chats/{chat_id}/drafts", drafts),
        ("GET", "/_emu/sent", sent),
        ("GET", "/_emu/stats", stats),
        ("GET", "/_emu/callback_answers", answers),
        ("GET", "/_emu/webhook", webhook),
    ]
    for verb, path, handler in table:
        app.router.add_route(verb, path, _guarded(bots, handler))
