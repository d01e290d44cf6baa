"""Files: what users send, ``getFile``, and ``/file/bot<token>/<file_path>``, as the cloud
Bot API serves them.

``getFile`` answers ``file_id``, ``file_unique_id``, ``file_size`` and a relative
``file_path`` (``photos/file_3.jpg``); 400 ``Bad Request: file_id not specified``,
``Bad Request: invalid file_id`` for an id it never gave out, and ``Bad Request: file is
too big`` past the download limit (20 MiB, telegram-bot-api's ``MAX_DOWNLOAD_FILE_SIZE``;
``FileStore.download_limit = None`` plays a local Bot API server). The download path
answers the bytes, 401 for an unknown token and 404 for a path it never gave out (each
bot has its own files: another bot's path is 404). Faults
named ``"file"`` (``fail_next("file", …)``, ``delay("file", …)``) apply to downloads.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.testkit.emulator.api import method
from gateway.testkit.emulator.errors import ApiError, bad_request
from gateway.testkit.emulator.params import Params
from gateway.testkit.emulator.userapi import json_response

if TYPE_CHECKING:
    from gateway.testkit.emulator.core import EmulatorCore

DOWNLOAD_FAULTS = "file"  # the pseudo-method the download path's faults are named by


@method("getFile")
async def get_file(emu: EmulatorCore, p: Params) -> Any:
    file_id = p.text("file_id")
    if not file_id or not file_id.strip():
        raise bad_request("file_id not specified")
    stored = emu.state.files.by_id.get(file_id.strip())
    if stored is None:
        raise bad_request("invalid file_id")
    limit = emu.state.files.download_limit
    if limit is not None and stored.size > limit:
        raise bad_request("file is too big")
    return stored.answer()


async def download(emu: EmulatorCore | None, request: web.Request) -> web.StreamResponse:
    """``GET /file/bot<token>/<file_path>``: the file's bytes (``emu``: the token's bot)."""
    if emu is None or emu.faults.is_unauthorized or request.match_info["token"] != emu.token:
        return json_response(ApiError(401, "Unauthorized").body(), 401)
    delay = emu.faults.delay_for(DOWNLOAD_FAULTS)
    if delay > 0:
        await asyncio.sleep(delay)
    failure = emu.faults.take_failure(DOWNLOAD_FAULTS)
    if failure is not None:
        return web.Response(
            status=failure.status, text=failure.body(), content_type=failure.content_type
        )
    stored = emu.state.files.by_path.get(request.match_info["path"])
    if stored is None or request.method not in ("GET", "HEAD"):
        return json_response(ApiError(404, "Not Found").body(), 404)
    emu.state.files.downloads.append(stored.path)
    return web.Response(body=stored.data(), content_type="application/octet-stream")
