"""``GET /api/files/{token}`` through a real ingress on 127.0.0.1 and the Bot API emulator:
the bytes a user sent come back whole, the link never holds the bot token and no log line
does; forged, expired, unknown, oversized and hostile requests get a 4xx with a reason;
Telegram failing gets a 5xx with a reason; without FILES_SECRET there is no endpoint."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.files import FileRef, FilesSettings, sign_file
from gateway.core.settings import IngressSettings, PipelineSettings, RedisSettings, TelegramSettings
from gateway.core.settings import load as load_settings
from gateway.core.tokens import sign_route
from gateway.ingress.serve import serve_ingress
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, TOKEN, free_port, running
from workers.worker.adapter import adapt
from workers.worker.files import FileLinks, with_files

pytestmark = pytest.mark.integration

SECRET = "files-secret-0123456789"
ALICE = 6123456789
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 300 + b"\n%%EOF\n"

Ingress = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture
def ingress(redis: aioredis.Redis, redis_url: str, emu: Emulator) -> Ingress:
    """``async with ingress(**files_settings) as base``: an ingress polling the emulator,
    with FILES_SECRET set unless ``files_secret=None``."""

    @asynccontextmanager
    async def start(**files: Any) -> AsyncIterator[str]:
        port = free_port()
        tg = load_settings(
            TelegramSettings,
            telegram_bot_token=TOKEN,
            telegram_api_url=emu.api_url,
            telegram_mode="polling",
            telegram_poll_timeout=1,
        )
        rs = load_settings(RedisSettings, redis_url=redis_url, partitions=2)
        ps = load_settings(PipelineSettings, delivery_secret="delivery-secret-0123456789")
        ing = load_settings(IngressSettings, ingress_host="127.0.0.1", ingress_port=port)
        fs = load_settings(FilesSettings, **{"files_secret": SECRET, **files})
        ready = asyncio.Event()
        async with running(
            lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready, files=fs)
        ):
            await asyncio.wait_for(ready.wait(), 15)
            yield f"http://127.0.0.1:{port}"

    return start


def links(base: str, ttl: int = 3600, max_bytes: int = 20 << 20) -> FileLinks:
    return FileLinks(SECRET.encode(), base, ttl, max_bytes)


def files_of(update: dict[str, Any], base: str, **kw: Any) -> list[dict[str, Any]]:
    """``metadata.files`` as the worker builds it for this update."""
    message = adapt(update, BOT_ID)
    assert message is not None
    out = with_files(message, update, links(base, **kw), BOT_ID, time.time())
    return list(out.metadata.get("files", []))


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def signed(file_id: str, **kw: Any) -> str:
    ref = FileRef(
        **{
            "bot_id": BOT_ID,
            "file_id": file_id,
            "file_unique_id": "AgADunique",
            "kind": "document",
            "expires_at": int(time.time()) + 600,
            **kw,
        }
    )
    return sign_file(SECRET.encode(), ref)


def no_token_in(text: str) -> None:
    assert TOKEN not in text and TOKEN.split(":", 1)[1] not in text


@pytest.mark.parametrize(
    ("kind", "extra", "ctype"),
    [
        (
            "document",
            {"file_name": "Счёт №7.pdf", "mime_type": "application/pdf"},
            "application/pdf",
        ),
        ("photo", {}, "image/jpeg"),
        ("voice", {}, "audio/ogg"),
        ("video", {}, "video/mp4"),
        ("sticker", {}, "image/webp"),
        ("audio", {"file_name": "song.mp3"}, "audio/mpeg"),
        ("video_note", {}, "video/mp4"),
        ("animation", {}, "video/mp4"),
    ],
)
async def test_a_file_a_user_sent_comes_back_whole_through_its_link(
    ingress: Ingress,
    emu: Emulator,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    extra: dict[str, str],
    ctype: str,
) -> None:
    """The worker's link for the file serves its exact bytes with a sensible type and an
    attachment name; neither the link nor any log line (every logger, DEBUG) holds the
    bot token."""
    caplog.set_level(logging.DEBUG)
    update = emu.user_send_file(ALICE, kind, content=PDF, caption="see", **extra)
    async with ingress() as base, httpx.AsyncClient(timeout=30) as http:
        [entry] = files_of(update, base)
        assert entry["kind"] == kind and entry["url"].startswith(f"{base}/api/files/")
        no_token_in(entry["url"])
        resp = await http.get(entry["url"])
        assert resp.status_code == 200, resp.text
        assert resp.content == PDF == emu.file_content(entry["file_id"])
        assert resp.headers["content-type"] == ctype
        assert resp.headers["content-length"] == str(len(PDF))
        assert resp.headers["x-content-type-options"] == "nosniff"
        disposition = resp.headers["content-disposition"]
        assert disposition.startswith("attachment; filename=")
        if "file_name" in extra:
            assert unquote(disposition.split("filename*=UTF-8''", 1)[1]) == extra["file_name"]
        no_token_in(str(resp.headers))
    no_token_in(caplog.text)
    tried = [r.name for r in caplog.records if "redacted" in r.getMessage()]
    assert set(tried) <= {"httpx"}  # the poller's getUpdates URLs; nothing of the files'


async def test_an_expired_link_is_410_and_a_forged_or_foreign_one_403(
    ingress: Ingress, emu: Emulator
) -> None:
    update = emu.user_send_file(ALICE, "document", content=PDF, file_name="a.pdf")
    file_id = update["message"]["document"]["file_id"]
    async with ingress() as base, httpx.AsyncClient(timeout=30) as http:
        [entry] = files_of(update, base)
        good = token_of(entry["url"])
        payload, mac = good.split(".")
        cases = {
            signed(file_id, expires_at=int(time.time()) - 1): (410, "file_expired"),
            f"{payload}.{mac[:-2]}AA": (403, "bad_token"),  # forged signature
            f"{payload[:-4]}AAAA.{mac}": (403, "bad_token"),  # payload changed
            signed(file_id, bot_id=BOT_ID + 1): (403, "bot_not_served"),  # a bot not served
            sign_route(SECRET.encode(), bot_id=BOT_ID, chat_id=1, reply_to=None,
                       update_id=1, ttl=60): (403, "bad_token"),  # a callback token
        }  # fmt: skip
        for token, (status, reason) in cases.items():
            resp = await http.get(f"{base}/api/files/{token}")
            assert resp.status_code == status, (token, resp.text)
            assert resp.json()["reason"] == reason and resp.json()["error"]
        assert (await http.get(entry["url"])).status_code == 200  # the real one still works
    assert emu.state.files.downloads == [emu.state.files.by_id[file_id].path]


async def test_files_over_the_limit_get_413_with_a_reason(ingress: Ingress, emu: Emulator) -> None:
    """Known too big from the update (no Telegram call), Telegram's own "file is too big"
    (cloud limit, 20 MiB), and a local server's larger file over FILES_MAX_BYTES."""
    big = 21 << 20
    update = emu.user_send_file(ALICE, "video", size=big)
    video = update["message"]["video"]
    file_id, unique = video["file_id"], video["file_unique_id"]
    async with ingress() as base, httpx.AsyncClient(timeout=30) as http:
        [entry] = files_of(update, base)
        assert entry["too_big"] is True and "url" not in entry  # no link to give out
        calls = emu.stats()["requests"].get("getFile", 0)
        resp = await http.get(
            f"{base}/api/files/{signed(file_id, file_unique_id=unique, file_size=big)}"
        )
        assert resp.status_code == 413 and resp.json()["reason"] == "file_too_big"
        assert "FILES_MAX_BYTES" in resp.json()["error"]
        assert emu.stats()["requests"].get("getFile", 0) == calls  # refused before asking
        link = f"{base}/api/files/{signed(file_id, file_unique_id=unique)}"  # no size in it
        resp = await http.get(link)
        assert resp.status_code == 413 and resp.json()["reason"] == "file_too_big"
        assert "file is too big" in resp.json()["error"]
        emu.state.files.download_limit = None  # a local Bot API server: no 20 MiB cap
        resp = await http.get(link)
        assert resp.status_code == 413 and "FILES_MAX_BYTES" in resp.json()["error"]
    assert emu.state.files.downloads == []


async def test_a_local_server_serves_past_20_mb_with_files_max_bytes_raised(
    ingress: Ingress, emu: Emulator
) -> None:
    big = 21 << 20
    emu.state.files.download_limit = None
    update = emu.user_send_file(ALICE, "document", size=big, file_name="big.bin")
    async with ingress(files_max_bytes=32 << 20) as base, httpx.AsyncClient(timeout=60) as http:
        [entry] = files_of(update, base, max_bytes=32 << 20)
        resp = await http.get(entry["url"])
        assert resp.status_code == 200
        assert len(resp.content) == big
        assert resp.content == emu.file_content(entry["file_id"])


async def test_unknown_files_are_404_and_other_methods_405(ingress: Ingress, emu: Emulator) -> None:
    update = emu.user_send_file(ALICE, "voice", content=b"OggS" * 100)
    async with ingress() as base, httpx.AsyncClient(timeout=30) as http:
        [entry] = files_of(update, base)
        resp = await http.get(f"{base}/api/files/{signed('BQACAgIAAxkBAAInever')}")
        assert resp.status_code == 404 and resp.json()["reason"] == "file_not_found"
        assert "invalid file_id" in resp.json()["error"]
        for verb in ("POST", "PUT", "DELETE", "HEAD"):
            resp = await http.request(verb, entry["url"])
            assert resp.status_code == 405, verb
            assert resp.headers["allow"] == "GET"
        emu.state.files.by_path.clear()  # Telegram forgot the path it gave out
        resp = await http.get(entry["url"])
        assert resp.status_code == 404 and resp.json()["reason"] == "file_not_found"


async def _raw_get(base: str, target: bytes) -> tuple[int, bytes]:
    """A request line sent as is (no client normalising ``..`` or encodings)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_hostile_tokens_get_403_and_never_reach_telegram(
    ingress: Ingress, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = signed("BQACAgIAAxkBAAInever")
    targets = [
        b"/api/files/" + b"A" * 10_000 + b"." + b"B" * 43,  # huge
        b"/api/files/../../etc/passwd",
        b"/api/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        b"/api/files/" + good.encode() + b"/../x",
        b"/api/files/" + good.encode() + b"%00",
        b"/api/files/" + good.encode() + b"==",
        b"/api/files/%E2%80%AE" + good.encode(),
        b"/api/files/.",
        b"/api/files/",
    ]
    async with ingress() as base:
        before = emu.stats()["requests"].get("getFile", 0)
        for target in targets:
            status, body = await _raw_get(base, target)
            assert status == 403, (target[:80], body)
            assert b'"reason":"bad_token"' in body
        status, _ = await _raw_get(base, b"/api/files/" + b"A" * 70_000)
        assert status in (400, 414, 431)  # the parser refuses a request line that long
        assert emu.stats()["requests"].get("getFile", 0) == before
    no_token_in(caplog.text)


async def test_telegram_failing_is_a_5xx_with_a_reason_and_no_token(
    ingress: Ingress, emu: Emulator
) -> None:
    update = emu.user_send_file(ALICE, "document", content=PDF, file_name="a.pdf")
    async with ingress(files_timeout_seconds=1) as base, httpx.AsyncClient(timeout=30) as http:
        [entry] = files_of(update, base)
        emu.faults.fail_next("getFile", 1, 502)
        resp = await http.get(entry["url"])
        assert resp.status_code == 502 and resp.json()["reason"] == "telegram_unavailable"
        emu.faults.fail_next("file", 1, 500)
        resp = await http.get(entry["url"])
        assert resp.status_code == 502 and resp.json()["reason"] == "telegram_unavailable"
        emu.faults.delay("getFile", 2.0)
        resp = await http.get(entry["url"])
        assert resp.status_code == 504 and resp.json()["reason"] == "telegram_unavailable"
        emu.faults.delay("getFile", 0)
        emu.faults.fail_next("getFile", 1, 429, html=False)
        resp = await http.get(entry["url"])
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        # Only getFile answers 401: the ingress also polls this emulator, and a poll
        # that met a 401 would stop the role (as it must for a revoked token).
        emu.faults.fail_next("getFile", 1, 401, html=False)
        resp = await http.get(entry["url"])
        assert resp.status_code == 502 and "401" in resp.json()["error"]
        no_token_in(resp.text)
        assert (await http.get(entry["url"])).content == PDF


async def test_without_files_secret_there_is_no_endpoint_and_no_link(
    ingress: Ingress, emu: Emulator
) -> None:
    update = emu.user_send_file(ALICE, "document", content=PDF, file_name="a.pdf")
    async with ingress(files_secret=None) as base, httpx.AsyncClient(timeout=30) as http:
        resp = await http.get(f"{base}/api/files/{signed('BQACAgIAAxkBAAInever')}")
        assert resp.status_code == 404
    message = adapt(update, BOT_ID)
    assert message is not None
    assert "files" not in with_files(message, update, None, BOT_ID, time.time()).metadata


@asynccontextmanager
async def cutting_bot_api(announced: int, sent: bytes) -> AsyncIterator[str]:
    """A stand-in Bot API (the emulator always sends whole files): getFile answers a
    path, whose download announces ``announced`` bytes, sends ``sent`` and hangs up."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n")
             if line.lower().startswith(b"content-length:")), 0,
        )  # fmt: skip
        await reader.readexactly(length)
        if b"/getFile " in head.split(b"\r\n")[0]:
            body = (
                b'{"ok":true,"result":{"file_id":"BQACAgIAAxkBAAIcut","file_unique_id":'
                b'"AgADunique","file_size":%d,"file_path":"documents/file_0.pdf"}}' % announced
            )
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (announced, sent))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_download_telegram_cuts_short_reaches_the_client_incomplete(
    redis: aioredis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Past its first byte the status cannot change: the client must see the body end
    before Content-Length, never a short file that looks whole."""
    port = free_port()
    async with cutting_bot_api(100_000, b"x" * 1000) as api:
        tg = load_settings(
            TelegramSettings, telegram_bot_token=TOKEN, telegram_api_url=api,
            telegram_mode="polling", telegram_poll_timeout=1,
        )  # fmt: skip
        rs = load_settings(RedisSettings, redis_url=redis_url, partitions=2)
        ps = load_settings(PipelineSettings)
        ing = load_settings(IngressSettings, ingress_host="127.0.0.1", ingress_port=port)
        fs = load_settings(FilesSettings, files_secret=SECRET)
        ready = asyncio.Event()
        async with (
            running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready, files=fs)),
            httpx.AsyncClient(timeout=30) as http,
        ):
            await asyncio.wait_for(ready.wait(), 15)
            url = f"http://127.0.0.1:{port}/api/files/{signed('BQACAgIAAxkBAAIcut')}"
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(url)
    assert "file download cut short after 1000 bytes" in caplog.text
    no_token_in(caplog.text)
