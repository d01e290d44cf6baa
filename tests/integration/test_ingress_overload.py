"""uvicorn's own in-flight limit (``limit_concurrency``, INGRESS_MAX_CONNECTIONS + 1): a
request's task may outlive its connection, and past the limit uvicorn answers 503 itself,
without the app. The ingress counts that refusal too (``endpoint="connection"``,
``reason="overloaded"``), as it counts the connections it refuses at connect."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.settings import MetricsSettings, load
from gateway.ingress.serve import serve_ingress_role
from gateway.testkit.emulator import Emulator
from tests.helpers import FIXTURES, RedisProcess, make_config, running, wait_for

pytestmark = pytest.mark.integration

TOKEN = "overload-test-token-0123456789"
SECRET = "overload-secret"
UPDATE = (FIXTURES / "updates" / "01_private_text_message.json").read_bytes()


def _post(update_id: int) -> bytes:
    body = UPDATE.replace(b'"update_id": ', b'"update_id": %d0' % update_id, 1)
    head = (
        "POST /webhook/telegram HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"x-telegram-bot-api-secret-token: {SECRET}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _rejected(url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    if answer.status_code != 200:  # uvicorn's own 503 while the limit holds
        return -1
    text = answer.text
    return sum(  # -1 above: not answered (the two stores may still hold the limit)
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "tg_gateway_ingress_rejected_total"
        and s.labels == {"endpoint": "connection", "reason": "overloaded"}
    )


async def test_uvicorns_in_flight_limit_is_counted(own_redis: RedisProcess, emu: Emulator) -> None:
    assert own_redis.proc is not None
    cfg = make_config(
        own_redis.url,
        emu.api_url,
        telegram={
            "telegram_enabled": False,
            "telegram_mode": "webhook",
            "telegram_webhook_url": "https://gw.example.com/webhook/telegram",
            "telegram_webhook_secret": SECRET,
        },
        ingress={"ingress_max_connections": 1, "ingress_store_timeout": 8},
    )
    cfg = dataclasses.replace(cfg, metrics=load(MetricsSettings, metrics_token=TOKEN))
    port = cfg.ingress.ingress_port
    url = f"http://127.0.0.1:{port}/metrics"

    async def answers() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return await _rejected(url) == 0
        return False

    async with running(lambda stop: serve_ingress_role(cfg, stop)):
        await wait_for(answers, timeout=15, message="ingress")
        os.kill(own_redis.proc.pid, signal.SIGSTOP)  # every store now waits
        try:
            for n in (1, 2):  # two updates whose tasks outlive their connections
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(_post(n))
                await writer.drain()
                await asyncio.sleep(0.5)  # read by the server, its task waiting on Redis
                writer.close()
                await asyncio.sleep(0.2)  # the close seen: the connection slot is free
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_post(3))
            await writer.drain()
            async with asyncio.timeout(10):
                answer = await reader.read(4096)
            writer.close()
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        # >= 1: a scrape answered by uvicorn's 503 while the stores still hold the limit
        # is one more such refusal, counted the same way.
        await wait_for(lambda: _counted(url), timeout=30, message="the 503 counted")


async def _counted(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return await _rejected(url) >= 1
    return False
