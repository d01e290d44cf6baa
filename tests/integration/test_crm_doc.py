"""docs/crm-integration.md's code, run as written: its receiving server (a real process on
127.0.0.1) takes the worker's signed requests and refuses others; its ``send_reply``
gets through a real ingress that checks callback signatures."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import importlib.util
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import GROUP_RECEIPTS
from gateway.core.errors import PipelineRejected
from gateway.core.receipt_settings import ReceiptSettings
from gateway.core.settings import IngressSettings, PipelineSettings, RedisSettings, TelegramSettings
from gateway.core.settings import load as load_settings
from gateway.core.signing import SigningKeys
from gateway.core.tokens import sign_route
from gateway.ingress.serve import serve_ingress
from gateway.testkit.emulator import Emulator
from tests.helpers import (
    BOT_ID,
    TOKEN,
    all_roles,
    env_without_gateway_vars,
    free_port,
    make_config,
    running,
    wait_for,
)
from workers.worker.adapter import adapt
from workers.worker.pipeline import HttpPipeline

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "crm-integration.md"
KEY = "whsec_" + base64.b64encode(b"crm-doc-test-key" * 2).decode()
OTHER = "whsec_" + base64.b64encode(b"someone-else-key" * 2).decode()
DELIVERY = "delivery-secret-0123456789"
UPDATE = {
    "update_id": 777,
    "message": {
        "message_id": 5,
        "date": 1_700_000_000,
        "chat": {"id": 4242, "type": "private"},
        "from": {"id": 4242, "is_bot": False, "first_name": "Ann"},
        "text": "Where is my order?",
    },
}


def doc_blocks() -> list[str]:
    """The ```python blocks of the page, in order."""
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_the_two_snippets() -> None:
    server, client = doc_blocks()
    assert "ThreadingHTTPServer" in server and "def send_reply" in client
    assert '"/receipts"' in server  # the same server takes the delivery receipts


@pytest.fixture
def doc_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    script = tmp_path / "receiver.py"
    script.write_text(doc_blocks()[0])
    port = free_port()
    env = {**env_without_gateway_vars(), "PIPELINE_SIGNING_KEY": KEY, "PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{url}/", timeout=1)  # 501 (no GET): it is up
                break
            except httpx.TransportError:
                assert proc.poll() is None, "the doc's server exited"
                assert time.monotonic() < deadline, "the doc's server did not start"
                time.sleep(0.05)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_the_docs_server_accepts_signed_requests_and_refuses_the_rest(
    doc_server: tuple[str, subprocess.Popen[str]],
) -> None:
    """Signed during a rotation (the server holds one of the two keys): 202, handled once
    across a retry. Signed only by another key, or unsigned: 401."""
    url, proc = doc_server
    message = adapt(UPDATE, BOT_ID)
    assert message is not None
    rotating = HttpPipeline(url, 5.0, SigningKeys.parse([OTHER, KEY]))
    forged = HttpPipeline(url, 5.0, SigningKeys.parse([OTHER]))
    unsigned = HttpPipeline(url, 5.0)
    try:
        for _ in range(2):  # a retry: the same webhook-id
            assert await rotating.submit(message, None, f"tg-{BOT_ID}-777") is None
        for pipeline in (forged, unsigned):
            with pytest.raises(PipelineRejected) as info:
                await pipeline.submit(message, None, f"tg-{BOT_ID}-777")
            assert info.value.status == 401
    finally:
        for pipeline in (rotating, forged, unsigned):
            await pipeline.aclose()
    proc.terminate()
    out, _ = proc.communicate(timeout=5)
    assert out.splitlines() == [f"message tg-{BOT_ID}-777 telegram_4242 Where is my order?"]


async def test_the_docs_send_reply_passes_a_checking_ingress(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The doc's ``send_reply`` signs a callback the ingress accepts; unsigned is 401."""
    script = tmp_path / "crm_doc_client.py"
    script.write_text(doc_blocks()[1])
    spec = importlib.util.spec_from_file_location("crm_doc_client", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    port = free_port()
    tg = load_settings(TelegramSettings, telegram_enabled=False, telegram_bot_token=TOKEN)
    rs = load_settings(RedisSettings, redis_url=redis_url)
    ps = load_settings(PipelineSettings, delivery_secret=DELIVERY, callback_signing_keys=KEY)
    ing = load_settings(IngressSettings, ingress_host="127.0.0.1", ingress_port=port)
    token = sign_route(
        DELIVERY.encode(), bot_id=BOT_ID, chat_id=4242, reply_to=5, update_id=777, ttl=60
    )
    callback = f"http://127.0.0.1:{port}/api/delivery/{token}"
    ready = asyncio.Event()
    async with running(lambda stop: serve_ingress(tg, rs, ps, ing, 60.0, stop, ready)):
        await asyncio.wait_for(ready.wait(), 10)
        status = await asyncio.to_thread(module.send_reply, callback, "Shipped today", KEY)
        assert status == 200
        async with httpx.AsyncClient() as http:
            refused = await http.post(callback, json={"content": "unsigned"})
        assert refused.status_code == 401
    lengths = [await redis.xlen(stream) for stream in rs.keys.all_outbound()]
    assert sum(lengths) == 1  # the signed reply, stored; the unsigned one not


async def test_the_docs_server_takes_the_gateway_s_receipts(
    doc_server: tuple[str, subprocess.Popen[str]],
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
) -> None:
    """``RECEIPTS_URL`` at the doc's server's ``/receipts``: a reply sent through the real
    roles gets its receipt there, verified with the key and printed once."""
    url, proc = doc_server
    emu.add_chat(4242, type="private")
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_signing_keys": KEY})
    receipts = load_settings(ReceiptSettings, receipts_url=f"{url}/receipts")
    cfg = dataclasses.replace(cfg, receipts=receipts)
    base = cfg.pipeline.gateway_public_url
    async with running(*all_roles(cfg)), httpx.AsyncClient() as http:

        async def ready() -> bool:
            try:
                groups = await redis.xinfo_groups(cfg.keys.results)
                health = await http.get(f"{base}/healthz")
            except (httpx.HTTPError, aioredis.ResponseError):
                return False
            names = {g["name"].decode() for g in groups}
            return health.status_code == 200 and GROUP_RECEIPTS in names

        await wait_for(ready, timeout=20, message="the roles")
        token = sign_route(
            cfg.pipeline.require_secret(), bot_id=BOT_ID, chat_id=4242, reply_to=None,
            update_id=778, ttl=60,
        )  # fmt: skip
        resp = await http.post(f"{base}/api/delivery/{token}", json={"content": "Shipped"})
        [reply_id] = resp.json()["reply_ids"]
        marker = cfg.keys.receipt(reply_id)  # set once the server answered 2xx
        await wait_for(lambda: redis.exists(marker), timeout=20, message="the receipt taken")
    proc.terminate()
    out, _ = proc.communicate(timeout=5)
    assert out.splitlines() == [f"receipt {reply_id} sent None"]
