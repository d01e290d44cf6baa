"""aiohttp application: the Bot API at ``/bot{token}/{method}`` (the token picks the bot;
an unknown one is 401) and the user side at ``/_emu/``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.testkit.emulator import bot_draft, bot_send, bot_updates  # noqa: F401 - they register the methods
from gateway.testkit.emulator.api import Described, lookup
from gateway.testkit.emulator.errors import ApiError
from gateway.testkit.emulator.files import download
from gateway.testkit.emulator.params import Params, read_params
from gateway.testkit.emulator.userapi import add_user_routes, json_response

if TYPE_CHECKING:
    from gateway.testkit.emulator.bots import BotDirectory
    from gateway.testkit.emulator.core import EmulatorCore

MAX_BODY = 64 * 1024 * 1024


def error_response(exc: ApiError) -> web.Response:
    return json_response(exc.body(), exc.status, exc.headers() or None)


async def bot_call(bots: BotDirectory, request: web.Request) -> web.Response:
    """One Bot API call: the token's bot, faults, method lookup, parameters, handler."""
    emu = bots.for_token(request.match_info["token"])
    if emu is None or emu.faults.is_unauthorized:
        return error_response(ApiError(401, "Unauthorized"))
    name = request.match_info["method"]
    entry = lookup(name)
    canonical = entry[0] if entry else name
    emu.state.count_request(canonical)
    params = await read_params(request) if entry is not None else {}
    # Like Telegram, a call that arrived is carried out even if the client hangs up
    # before the answer (a sender cancelled mid-request): shielded from the disconnect.
    return await asyncio.shield(_answer(emu, canonical, entry, params))


async def _answer(
    emu: EmulatorCore, canonical: str, entry: Any, params: dict[str, Any]
) -> web.Response:
    faults = emu.faults
    delay = faults.delay_for(canonical)
    if delay > 0:
        await asyncio.sleep(delay)
    failure = faults.take_failure(canonical)
    if failure is not None:
        return web.Response(
            status=failure.status, text=failure.body(), content_type=failure.content_type
        )
    if entry is None:
        return error_response(ApiError(404, "Not Found: method not found"))
    try:
        result = await entry[1](emu, Params(params))
    except ApiError as exc:
        return error_response(exc)
    if isinstance(result, Described):
        body = {"ok": True, "result": result.result, "description": result.description}
        return json_response(body)
    return json_response({"ok": True, "result": result})


async def not_found(request: web.Request) -> web.Response:
    return error_response(ApiError(404, "Not Found"))


def build_app(bots: BotDirectory) -> web.Application:
    """The emulator's routes for the bots it serves (the token picks the bot)."""
    app = web.Application(client_max_size=MAX_BODY)

    async def bot_api(request: web.Request) -> web.Response:
        return await bot_call(bots, request)

    async def file_download(request: web.Request) -> web.StreamResponse:
        return await download(bots.for_token(request.match_info["token"]), request)

    app.router.add_route("*", "/bot{token}/{method}", bot_api)
    app.router.add_route("*", "/file/bot{token}/{path:.+}", file_download)
    add_user_routes(app, bots)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
