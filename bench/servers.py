"""The servers bench/ingress.py measures, one per process:

    python -m bench.servers {bare,aiogram,tg-gateway,naive} --port N [options]

bare        bare ASGI app: read the body, answer 200 {"ok":true}; no Redis (HTTP ceiling)
aiogram     aiogram's SimpleRequestHandler on aiohttp.web, no-op message handler
tg-gateway  ours: gateway.ingress.serve.serve_ingress, build_ingress + uvicorn: `tg-gateway ingress`
naive       bare ASGI app, one `await redis.xadd(...)` per request (no coalescing, no dedupe)

bare and naive run under uvicorn configured like gateway/ingress/serve.py (uvloop, httptools,
access log off); tg-gateway runs the product's own code path. Every server listens on
127.0.0.1 only. SIGTERM stops each of them.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import signal
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import orjson
import uvicorn
import uvloop

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOST = "127.0.0.1"
WEBHOOK_PATH = "/webhook/telegram"
FAKE_TOKEN = "123456:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
SERVERS = ("bare", "aiogram", "tg-gateway", "naive")
_OK = orjson.dumps({"ok": True})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _answer(send: Send, status: int, payload: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The HTTP ceiling: read the body, answer 200 {"ok":true}."""
    if scope["type"] != "http":
        return
    try:
        await _read_body(receive)
    except ConnectionResetError:
        return
    await _answer(send, 200, _OK)


class NaiveApp:
    """Per-request round trip: secret check, parse, one XADD, then 200. No dedupe."""

    def __init__(self, redis_url: str, prefix: str, partitions: int, secret: str) -> None:
        # imported here so the bare server's RSS does not include gateway/pydantic
        from gateway.core.contracts import Keys, extract_update_ids, partition_for, update_fields

        self._extract = extract_update_ids
        self._partition = partition_for
        self._fields = update_fields
        self._url = redis_url
        self._keys = Keys(prefix, partitions)
        self._secret = secret.encode()
        self._redis: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-telegram-bot-api-secret-token", b"")
        if not hmac.compare_digest(given, self._secret):
            await _answer(send, 401, b'{"ok":false}')
            return
        try:
            body = await _read_body(receive)
        except ConnectionResetError:
            return
        update = orjson.loads(body)
        chat_id, _ = self._extract(update)
        p = self._partition(chat_id, self._keys.partitions)
        fields = self._fields(
            bot_id=123456,
            update_id=update["update_id"],
            chat_id=chat_id,
            source="webhook",
            raw_update=body,
        )
        await self._redis.xadd(self._keys.updates(p), fields)
        await _answer(send, 200, _OK)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        from gateway.runtime.streams import connect

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._redis = connect(self._url)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def serve_asgi(app: Callable[..., Any], port: int, lifespan: Literal["on", "off"]) -> None:
    """uvicorn configured as gateway/ingress/serve.py configures it, in uvloop as the CLI
    runs it."""
    config = uvicorn.Config(
        app,
        host=HOST,
        port=port,
        lifespan=lifespan,
        log_config=None,
        access_log=False,
        loop="none",
        http="httptools",
    )
    uvloop.run(uvicorn.Server(config).serve())


def serve_aiogram(port: int, secret: str, loop: str) -> None:
    """What an aiogram webhook bot runs: SimpleRequestHandler (answers before handling)."""
    from aiogram import Bot, Dispatcher
    from aiogram.types import Message as TgMessage
    from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
    from aiohttp import web

    async def main() -> None:
        bot = Bot(FAKE_TOKEN)  # never calls Telegram: the handler does nothing
        dp = Dispatcher()

        @dp.message()
        async def noop(message: TgMessage) -> None:  # returns None: no webhook reply
            return None

        app = web.Application()
        SimpleRequestHandler(dispatcher=dp, bot=bot, secret_token=secret).register(
            app, path=WEBHOOK_PATH
        )
        setup_application(app, dp, bot=bot)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, port).start()
        stop = asyncio.Event()
        aloop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            aloop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    if loop == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


def serve_gateway(port: int, redis_url: str, prefix: str, partitions: int, secret: str) -> None:
    """`tg-gateway ingress` with Telegram disabled: run_async + serve_ingress, unchanged."""
    from gateway.app.running import run_async
    from gateway.core.logs import setup_logging
    from gateway.core.settings import (
        IngressSettings,
        MetricsSettings,
        PipelineSettings,
        RedisSettings,
        SenderSettings,
        TelegramSettings,
        load,
    )
    from gateway.ingress.serve import ingress_metrics, serve_ingress

    tg = load(
        TelegramSettings,
        telegram_enabled=False,
        telegram_bot_token=FAKE_TOKEN,
        telegram_webhook_secret=secret,
        # Webhook mode serves the webhook route (polling mode answers it 404); with Telegram
        # disabled the ingress registers nothing at this URL.
        telegram_webhook_url=f"http://{HOST}:{port}",
        telegram_mode="webhook",
    )
    rs = load(RedisSettings, redis_url=redis_url, stream_prefix=prefix, partitions=partitions)
    ps = load(PipelineSettings, delivery_secret=None)
    ing = load(IngressSettings, ingress_host=HOST, ingress_port=port)
    sender = load(SenderSettings)
    # METRICS_TOKEN in the environment turns the metrics on, as for `tg-gateway ingress`.
    observe = ingress_metrics(load(MetricsSettings), rs)
    setup_logging("INFO", "text", (FAKE_TOKEN, secret))
    ttl = sender.outbound_ttl_seconds
    run_async(lambda stop: serve_ingress(tg, rs, ps, ing, ttl, stop, observe=observe))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    ap.add_argument("server", choices=SERVERS)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret", default="bench-secret")
    ap.add_argument("--redis-url", default="")
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="aiogram")
    args = ap.parse_args(argv)
    if args.server == "bare":
        serve_asgi(bare_app, args.port, lifespan="off")
    elif args.server == "aiogram":
        serve_aiogram(args.port, args.secret, args.loop)
    elif args.server == "tg-gateway":
        serve_gateway(args.port, args.redis_url, args.prefix, args.partitions, args.secret)
    else:
        app = NaiveApp(args.redis_url, args.prefix, args.partitions, args.secret)
        serve_asgi(app, args.port, lifespan="on")


if __name__ == "__main__":
    main()
