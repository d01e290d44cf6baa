"""Running a role in the foreground: the event loop, signal handling and exit codes.

Shared by the CLI and the sandbox (``gateway.app.sandbox``), so neither imports the other.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger("tg-gateway")

# Exit codes (README, "Exit codes"): 1 the command ran and failed (a sandbox message got
# no reply, `dlq show` found nothing, an unexpected gateway error); 2 a bad setting or
# argument; 3 a service the command needs (Redis, the Bot API) is unreachable or refused
# it; 130 Ctrl-C; 141 stdout closed early (`| head`), like tools killed by SIGPIPE.
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3
EXIT_TELEGRAM = EXIT_UNAVAILABLE
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141


def run_async(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run a role; SIGTERM/SIGINT set the stop event (graceful), a second one kills."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
        await main(stop)

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(runner())
    return 0


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    if stop.is_set():
        log.warning("second %s: exiting now", sig.name)
        raise SystemExit(1)
    log.info("%s received: stopping (in-flight work finishes, the rest stays pending)", sig.name)
    stop.set()
