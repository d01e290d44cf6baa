"""What a pipeline, a CRM or an operator hands back for sending, refused at every door:
attachment references (callback, `send`, the outbound stream), callback tokens of
another bot or in a lenient spelling, and reply bodies nested too deep (callback and a
synchronous pipeline's answer). Real Redis, real HTTP on 127.0.0.1, the emulator."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.app.cli import main as cli_main
from gateway.app.roles import serve_sender, serve_worker
from gateway.core.contracts import Keys, OutboundEntry, decode_fields, partition_for, update_fields
from gateway.core.settings import IngressSettings, PipelineSettings, RedisSettings, TelegramSettings
from gateway.core.settings import load as load_settings
from gateway.core.tokens import sign_route
from gateway.ingress.serve import serve_ingress
from gateway.runtime.streams import ensure_groups, publish_outbound
from gateway.testkit.emulator import Emulator
from tests.helpers import (
    BOT_ID,
    FIXTURES,
    GATEWAY_ENV_PREFIXES,
    TOKEN,
    dead_letters,
    env_without_gateway_vars,
    free_port,
    make_config,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

DELIVERY = "delivery-secret-0123456789"
CHAT = 42
FILE_ID = "AgACAgIAAxkBAAIFCGd5Qk7rP0a1VbX3c9Yt2mWqLz8hAALm4jEbR3rIS0pQm2fA1sG9AQADAgADeQADNgQ"
DEEP = b'{"message":' * 1000 + b'"hi"' + b"}" * 1000  # decodes (orjson allows 1024)
TOO_DEEP = b'{"message":' * 1100 + b'"hi"' + b"}" * 1100  # past the decoder's limit
BAD_REFS = ["file:///etc/passwd", "gopher://127.0.0.1:6379/_FLUSHALL", "/etc/passwd", "../x"]


async def outbound(redis: aioredis.Redis, keys: Keys) -> list[dict[str, str]]:
    return [
        decode_fields(fields) for s in keys.all_outbound() for _, fields in await redis.xrange(s)
    ]


# --- the callback, through a real ingress ----------------------------------------------


@pytest.fixture
async def ingress(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[tuple[str, Keys]]:
    port = free_port()
    tg = load_settings(TelegramSettings, telegram_enabled=False, telegram_bot_token=TOKEN)
    rs = load_settings(RedisSettings, redis_url=redis_url, partitions=2)
    ps = load_settings(PipelineSettings, delivery_secret=DELIVERY)
    ing = load_settings(IngressSettings, ingress_host="127.0.0.1", ingress_port=port)
    ready = asyncio.Event()
    async with running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready)):
        await asyncio.wait_for(ready.wait(), 10)
        yield f"http://127.0.0.1:{port}", Keys("tg", 2)


def token(bot_id: int = BOT_ID) -> str:
    return sign_route(
        DELIVERY.encode(), bot_id=bot_id, chat_id=CHAT, reply_to=7, update_id=99, ttl=60
    )


async def post(base: str, tok: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(
            f"{base}/api/delivery/{tok}",
            content=body,
            headers={"Content-Type": "application/json"},
        )


@pytest.mark.parametrize(
    "attachment",
    [
        *BAD_REFS,
        {"type": "photo", "file_id": "file:///etc/passwd"},
        {"type": "document", "url": "ftp://example.com/a.pdf"},
        {"type": "document", "file_id": "attach://secret"},
        {"type": "photo", "url": "https://example.com/a b.png"},
    ],
)
async def test_callback_refuses_attachments_that_are_not_urls_or_file_ids(
    ingress: tuple[str, Keys], redis: aioredis.Redis, attachment: object
) -> None:
    base, keys = ingress
    body = orjson.dumps({"content": "see attached", "attachments": [attachment]})
    resp = await post(base, token(), body)
    assert resp.status_code == 422, resp.text
    assert "attachment" in resp.json()["error"]
    assert await outbound(redis, keys) == []


async def test_callback_still_takes_urls_and_file_ids(
    ingress: tuple[str, Keys], redis: aioredis.Redis
) -> None:
    base, keys = ingress
    body = orjson.dumps(
        {"content": "x", "attachments": ["https://example.com/a.png", {"file_id": FILE_ID}]}
    )
    resp = await post(base, token(), body)
    assert resp.status_code == 200, resp.text
    assert [e["method"] for e in await outbound(redis, keys)] == [
        "sendMessage",
        "sendPhoto",
        "sendDocument",
    ]


async def test_callback_token_of_another_bot_is_403(
    ingress: tuple[str, Keys], redis: aioredis.Redis
) -> None:
    """Signed with the same DELIVERY_SECRET, but for a bot this deployment does not serve:
    not ours to send."""
    base, keys = ingress
    resp = await post(base, token(bot_id=BOT_ID + 1), b'{"content": "pwned"}')
    assert resp.status_code == 403
    assert "bot not served" in resp.json()["error"]
    assert await outbound(redis, keys) == []


@pytest.mark.parametrize("suffix", ["!!", "=", "%20%20", "%0A%0A", "%09%09%09%09"])
async def test_callback_token_in_a_lenient_spelling_is_403(
    ingress: tuple[str, Keys], redis: aioredis.Redis, suffix: str
) -> None:
    base, keys = ingress
    resp = await post(base, token() + suffix, b'{"content": "pwned"}')
    assert resp.status_code == 403, resp.text
    assert await outbound(redis, keys) == []


@pytest.mark.parametrize(("body", "status"), [(DEEP, 422), (TOO_DEEP, 400)])
async def test_callback_with_a_deep_body_is_4xx_not_500(
    ingress: tuple[str, Keys], redis: aioredis.Redis, body: bytes, status: int
) -> None:
    base, keys = ingress
    resp = await post(base, token(), body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]
    assert await outbound(redis, keys) == []


# --- tg-gateway send -----------------------------------------------------------------


@pytest.fixture
def send_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> None:
    """`send` in this process with only the bot token and Redis set (no .env read)."""
    for name in list(os.environ):
        if name.startswith(GATEWAY_ENV_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    "args",
    [
        *(["--chat-id", "1001", "--photo", ref] for ref in BAD_REFS),
        ["--chat-id", "1001", "--document", "attach://x"],
        ["--chat-id", "1001", "--photo", ""],
        ["--chat-id", "1001", "--photo", "https://example.com/a.png\n", "--text", "x"],
        ["--chat-id", "", "--text", "hi"],
        ["--chat-id", "abc", "--text", "hi"],
        ["--chat-id", "1 2", "--text", "hi"],
        ["--chat-id", "0", "--text", "hi"],
        ["--chat-id", "١٢", "--text", "hi"],
        ["--chat-id", "1001", "--text", "hi", "--ttl", "-5"],
        ["--chat-id", "1001", "--text", "hi", "--ttl", "0"],
        ["--chat-id", "1001", "--text", "hi", "--ttl", "nan"],
        ["--chat-id", "1001", "--text", "hi", "--ttl", "inf"],
    ],
)
async def test_send_refuses_bad_arguments_with_one_line_and_exit_2(
    send_env: None,
    redis: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    code = await asyncio.to_thread(cli_main, ["send", *args])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert "send: --" in err
    assert await redis.keys("*") == []  # nothing queued, no stream even created


async def test_send_accepts_what_it_should(
    send_env: None, redis: aioredis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (
        ["--chat-id", "-1002143658709", "--text", "hi", "--ttl", "30"],
        ["--chat-id", "@example_channel", "--photo", FILE_ID],
        ["--chat-id", "1001", "--document", "https://example.com/a.pdf"],
    ):
        assert await asyncio.to_thread(cli_main, ["send", *args]) == 0, capsys.readouterr()
    rs = load_settings(RedisSettings, redis_url=redis_url)
    chats = sorted(
        e["chat_id"] for e in await outbound(redis, Keys(rs.stream_prefix, rs.partitions))
    )
    assert chats == ["-1002143658709", "1001", "@example_channel"]


async def test_send_with_a_file_url_exits_2_as_a_process(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The command as an operator runs it: exit 2, one line, nothing in Redis."""
    env = {**env_without_gateway_vars(), "TELEGRAM_BOT_TOKEN": TOKEN, "REDIS_URL": redis_url}
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "gateway",
            "send",
            "--chat-id",
            "1",
            "--photo",
            "file:///etc/passwd",
        ],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "file:" in proc.stderr
    assert await redis.keys("*") == []


# --- the sender, on entries a CRM wrote straight to the stream -------------------------


@pytest.mark.parametrize(
    ("method", "field"),
    [("sendPhoto", "photo"), ("sendDocument", "document")],
)
async def test_sender_dead_letters_a_file_reference_without_calling_telegram(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, method: str, field: str
) -> None:
    emu.add_chat(1001, type="private")
    cfg = make_config(redis_url, emu.api_url)
    await ensure_groups(redis, cfg.keys)
    stream = cfg.keys.outbound(partition_for(1001, cfg.keys.partitions, BOT_ID))
    raw = {  # what a CRM writes with XADD: the public envelope, not our model
        "schema": "1",
        "reply_id": "crm-1",
        "bot_id": str(BOT_ID),
        "chat_id": "1001",
        "method": method,
        "payload": json.dumps({field: "file:///etc/passwd", "caption": "x"}),
        "origin": "crm",
    }
    await redis.xadd(stream, raw)  # type: ignore[arg-type]
    after = OutboundEntry(bot_id=BOT_ID, chat_id=1001, payload={"text": "after it"})
    await publish_outbound(redis, cfg.keys, [after])
    async with running(lambda stop: serve_sender(cfg, stop)):
        [msg] = await emu.wait_messages(1001, 1, timeout=15)  # the sender is working
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
    assert msg["text"] == "after it"
    assert (dead["stage"], dead["reason"]) == ("sender", "invalid_entry")
    assert "file:" in dead["error"]
    assert method not in emu.stats()["requests"]
    assert [m["text"] for m in emu.messages(1001)] == ["after it"]


# --- a synchronous pipeline answering 200 with an unusable body --------------------------

TEXT = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())
ALICE = TEXT["message"]["chat"]["id"]


class SyncPipeline:
    """A real HTTP server on 127.0.0.1 that answers every POST 200 with one fixed body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.posts = 0
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def _messages(self, request: web.Request) -> web.Response:
        await request.read()
        self.posts += 1
        return web.Response(status=200, body=self.body, content_type="application/json")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/messages/", self._messages)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        TOO_DEEP,
        orjson.dumps({"content": "see attached", "attachments": ["file:///etc/passwd"]}),
    ],
    ids=["deep", "too-deep", "file-attachment"],
)
async def test_a_sync_pipelines_unusable_reply_is_one_post_one_dead_letter_one_apology(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, body: bytes
) -> None:
    pipeline = SyncPipeline(body)
    await pipeline.start()
    try:
        cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
        await ensure_groups(redis, cfg.keys)
        update = copy.deepcopy(TEXT)
        stream = cfg.keys.updates(partition_for(ALICE, cfg.keys.partitions, BOT_ID))
        fields = update_fields(
            bot_id=BOT_ID,
            update_id=update["update_id"],
            chat_id=ALICE,
            source="replay",
            raw_update=orjson.dumps(update),
        )
        await redis.xadd(stream, fields)  # type: ignore[arg-type]
        async with running(lambda stop: serve_worker(cfg, stop)):
            [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
            await wait_for(lambda: _acked(redis, stream), message="update acknowledged")
        sent = [e for e in await outbound(redis, cfg.keys) if e["method"] == "sendMessage"]
    finally:
        await pipeline.stop()
    assert pipeline.posts == 1
    assert (dead["stage"], dead["reason"]) == ("worker", "pipeline_bad_reply")
    assert [orjson.loads(e["payload"])["text"] for e in sent] == [cfg.worker.apology_text]
    assert int(sent[0]["chat_id"]) == ALICE


async def _acked(redis: aioredis.Redis, stream: str) -> bool:
    groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    return all(not g["pending"] and not g["lag"] for g in groups)
