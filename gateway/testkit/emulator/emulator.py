"""The ``Emulator``: a Telegram Bot API server on 127.0.0.1 plus its Python user-side API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Literal

from aiohttp import web

from gateway.testkit.emulator.app import build_app
from gateway.testkit.emulator.bots import SAME, BotDirectory
from gateway.testkit.emulator.core import DEFAULT_TOKEN, EmulatorCore
from gateway.testkit.emulator.limits import EmulatorLimits
from gateway.testkit.emulator.state import Clock

log = logging.getLogger(__name__)


class Emulator(EmulatorCore):
    """A fake Telegram: bot side over HTTP, user side over Python and ``/_emu/`` HTTP.

    It is its first bot (``token``); ``add_bot`` serves more, each with its own state,
    webhook, limits and faults (``bot(id)``). Use from the event loop's thread only.
    """

    _runner: web.AppRunner | None = None
    _base: str | None = None

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        bot_username: str = "example_gateway_bot",
        bot_name: str = "Example Gateway",
        limits: EmulatorLimits | None = None,
        webhook_retry_delay: float = 0.05,
        *,
        webhook_timeout: float = 10.0,
        max_poll_timeout: float = 50.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            token, bot_username, bot_name, limits, webhook_retry_delay,
            webhook_timeout=webhook_timeout, max_poll_timeout=max_poll_timeout, clock=clock,
        )  # fmt: skip
        self._options = (webhook_retry_delay, webhook_timeout, max_poll_timeout, clock)
        self.bots = BotDirectory(self, self._new_bot)

    # --- many bots ----------------------------------------------------------------------

    def add_bot(
        self,
        token: str,
        username: str | None = None,
        name: str | None = None,
        limits: EmulatorLimits | Literal["same"] | None = SAME,
    ) -> EmulatorCore:
        """Serve one more bot with its own chats, updates, webhook, limits (``limits``: the
        first bot's unless given; None: none enforced), faults and files; the same token
        again returns the bot already served."""
        return self.bots.add(token, username, name, limits)

    def bot(self, ref: int | str | None = None) -> EmulatorCore:
        """A served bot by id, username or token (None: the first bot, this object);
        ``UnknownBotError`` (a LookupError) otherwise."""
        return self.bots.get(ref)

    def rotate_token(self, ref: int | str, token: str | None = None) -> str:
        """A bot's token is revoked: the old one answers 401, the new one (returned) works."""
        return self.bots.rotate_token(ref, token)

    def _new_bot(
        self, token: str, username: str, name: str, limits: EmulatorLimits | None
    ) -> EmulatorCore:
        retry_delay, timeout, poll_timeout, clock = self._options
        return EmulatorCore(
            token, username, name, limits, retry_delay,
            webhook_timeout=timeout, max_poll_timeout=poll_timeout, clock=clock,
        )  # fmt: skip

    def reset(self) -> None:
        """Forget every bot's chats, messages, updates, webhook, logs and faults (the bots
        stay served; ``EmulatorCore.reset(emu.bot(x))`` resets one)."""
        for core in self.bots:
            EmulatorCore.reset(core)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port); returns the base URL."""
        runner = web.AppRunner(
            build_app(self.bots), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        shown = "[::1]" if shown == "::" else (f"[{shown}]" if ":" in shown else shown)
        self._base = f"http://{shown}:{bound_port}"
        self.bots.start()
        log.info("telegram emulator listening on %s", self._base)
        return self._base

    async def stop(self) -> None:
        """Answer pending long polls, stop webhook delivery (every bot's), close the server."""
        await self.bots.stop()
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
    more_bots: Sequence[tuple[str, str | None]] = (),
) -> None:
    """Serve an emulator until cancelled (for ``tg-gateway emulator``); ``more_bots``:
    (token, username or None) of the bots served besides the first."""
    emu = Emulator(token=token, bot_username=bot_username, limits=limits)
    for more_token, username in more_bots:
        emu.add_bot(more_token, username)
    await emu.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await emu.stop()
