"""Requests to the pipeline signed per Standard Webhooks, as a real worker sends them to a
real HTTP server on 127.0.0.1, verified with the reference library (``standardwebhooks``),
not with the gateway's own code."""

from __future__ import annotations

import base64
import copy
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.app.roles import serve_worker
from gateway.core.contracts import partition_for, update_fields
from gateway.core.errors import PipelineUnavailable
from gateway.core.signing import SigningKeys
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, FIXTURES, make_config, running, wait_for
from workers.worker.adapter import adapt
from workers.worker.pipeline import HttpPipeline

pytestmark = pytest.mark.integration

OLD = "whsec_" + base64.b64encode(b"old-key-" * 4).decode()
NEW = "whsec_" + base64.b64encode(b"new-key-" * 4).decode()
TEXT = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())
ALICE = TEXT["message"]["chat"]["id"]


class Receiver:
    """A pipeline that records each request's headers and exact body, answering the
    queued statuses first (then 202)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.url = ""

    async def _messages(self, request: web.Request) -> web.Response:
        self.seen.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 202
        return web.json_response({"status": "accepted"}, status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(503)
    app = web.Application()
    app.router.add_post("/api/messages/", rec._messages)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield rec
    finally:
        await runner.cleanup()


def text_update(update_id: int) -> dict[str, Any]:
    update = copy.deepcopy(TEXT)
    update["update_id"] = update_id
    update["message"]["text"] = "Hello, is anyone there?"
    return update


async def publish(redis: aioredis.Redis, cfg: Any, update: dict[str, Any]) -> None:
    await ensure_groups(redis, cfg.keys)
    fields = update_fields(
        bot_id=BOT_ID,
        update_id=update["update_id"],
        chat_id=ALICE,
        source="replay",
        raw_update=orjson.dumps(update),
    )
    stream = cfg.keys.updates(partition_for(ALICE, cfg.keys.partitions, BOT_ID))
    await redis.xadd(stream, fields)  # type: ignore[arg-type]


async def test_a_retried_request_is_signed_at_each_attempt_with_one_webhook_id(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pipeline answers 503, then 202: both attempts carry ``webhook-id`` = the
    idempotency key, a fresh timestamp, and signatures by both keys (a rotation) that the
    reference library verifies with either key; no key shows up in the logs."""
    caplog.set_level(logging.DEBUG)
    emu.add_chat(ALICE, type="private")
    cfg = make_config(
        redis_url,
        emu.api_url,
        pipeline={"pipeline_url": receiver.url, "pipeline_signing_keys": f"{OLD},{NEW}"},
    )
    await publish(redis, cfg, text_update(5001))
    started = time.time()
    async with running(lambda stop: serve_worker(cfg, stop)):
        await wait_for(lambda: len(receiver.seen) >= 2, timeout=15, message="the retry")
    assert len(receiver.seen) == 2
    ids = set()
    for headers, body in receiver.seen:
        for key in (OLD, NEW):
            assert Webhook(key).verify(body, headers)["client_id"] == f"telegram_{ALICE}"
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)
        assert headers["webhook-id"] == headers["Idempotency-Key"] == f"tg-{BOT_ID}-5001"
        assert started - 1 <= int(headers["webhook-timestamp"]) <= time.time() + 1
        ids.add(headers["webhook-id"])
    assert ids == {f"tg-{BOT_ID}-5001"}
    assert "503" in caplog.text  # the retry was logged ...
    for key in (OLD, NEW):  # ... and no key was
        assert key.removeprefix("whsec_") not in caplog.text


async def test_each_attempt_gets_its_own_timestamp(receiver: Receiver) -> None:
    """A retry is signed anew: the timestamp is the attempt's, the id stays."""
    clock = iter([1_900_000_000.0, 1_900_000_042.9])
    pipeline = HttpPipeline(receiver.url, 5.0, SigningKeys.parse([NEW]), clock=lambda: next(clock))
    message = adapt(text_update(5002), BOT_ID)
    assert message is not None
    try:
        with pytest.raises(PipelineUnavailable):  # the queued 503
            await pipeline.submit(message, None, "tg-1-5002")
        assert await pipeline.submit(message, None, "tg-1-5002") is None
    finally:
        await pipeline.aclose()
    stamps = [h["webhook-timestamp"] for h, _ in receiver.seen]
    assert stamps == ["1900000000", "1900000042"]
    assert {h["webhook-id"] for h, _ in receiver.seen} == {"tg-1-5002"}


async def test_without_keys_requests_carry_no_signature_headers(receiver: Receiver) -> None:
    """PIPELINE_SIGNING_KEYS unset: the request is today's, no ``webhook-*`` header."""
    receiver.statuses.clear()
    pipeline = HttpPipeline(receiver.url, 5.0)
    message = adapt(text_update(5003), BOT_ID)
    assert message is not None
    try:
        assert await pipeline.submit(message, None, "tg-1-5003") is None
    finally:
        await pipeline.aclose()
    ((headers, _),) = receiver.seen
    assert not [h for h in headers if h.lower().startswith("webhook-")]
    assert headers["Idempotency-Key"] == "tg-1-5003"
