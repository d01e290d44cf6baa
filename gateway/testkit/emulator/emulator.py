"""The ``Emulator``: a Telegram Bot API server on 127.0.0.1 plus its Python user-side API."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from aiohttp import web

from gateway.testkit.emulator.app import build_app
from gateway.testkit.emulator.core import DEFAULT_TOKEN, EmulatorCore
from gateway.testkit.emulator.limits import EmulatorLimits

log = logging.getLogger(__name__)


class Emulator(EmulatorCore):
    """A fake Telegram: bot side over HTTP, user side over Python and ``/_emu/`` HTTP.

    Use from the event loop's thread only.
    """

    _runner: web.AppRunner | None = None
    _base: str | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port); returns the base URL."""
        runner = web.AppRunner(
            build_app(self), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        shown = "[::1]" if shown == "::" else (f"[{shown}]" if ":" in shown else shown)
        self._base = f"http://{shown}:{bound_port}"
        self.closing = False
        await self._webhook.start()
        log.info("telegram emulator listening on %s", self._base)
        return self._base

    async def stop(self) -> None:
        """Answer pending long polls, stop webhook delivery, close the server."""
        self.closing = True
        self.signal.fire()
        await self._webhook.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def api_url(self) -> str:
        """The base URL (``TELEGRAM_API_URL``); Bot API calls go to ``{api_url}/bot{token}/…``."""
        if self._base is None:
            raise RuntimeError("the emulator is not started")
        return self._base


async def run_emulator(
    host: str = "127.0.0.1",
    port: int = 8081,
    token: str = DEFAULT_TOKEN,
    bot_username: str = "example_gateway_bot",
    limits: EmulatorLimits | None = None,
) -> None:
    """Serve an emulator until cancelled (for ``tg-gateway emulator``)."""
    emu = Emulator(token=token, bot_username=bot_username, limits=limits)
    await emu.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await emu.stop()
