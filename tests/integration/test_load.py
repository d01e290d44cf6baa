"""``tg-gateway load`` against the real roles in-process, the emulator and the reference
pipeline (issue 12): every update answered, the latency's shares add up, the rate held."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.runtime.streams import connect
from gateway.testkit.emulator import Emulator
from gateway.testkit.load.report import render
from gateway.testkit.load.run import LoadRequest, run_load
from gateway.testkit.load.synth import parse_mix
from gateway.testkit.reference.app import ReferencePipelineServer
from tests.helpers import all_roles, free_port, make_config, running, wait_for

pytestmark = pytest.mark.integration

SECRET = "load-secret-0123"
CLOCK_TOLERANCE = 0.002  # seconds: the shares come from three clocks' reads
PIPELINE_DELAY = 0.02


@pytest.fixture
async def pipeline() -> AsyncIterator[ReferencePipelineServer]:
    server = ReferencePipelineServer(
        mode="async", delay=PIPELINE_DELAY, callback_backoff=0.05, test_endpoints=True
    )
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


async def _up(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            return (await http.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def test_a_short_load_is_answered_and_its_shares_add_up(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    """20 chats at 30/s for 2 s: every update answered, each reply's pipeline and limiter
    shares within its total (the gateway's own never negative), the rate held."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = make_config(
        redis_url,
        emu.api_url,
        telegram={"telegram_mode": "webhook", "telegram_webhook_secret": SECRET,
                  "telegram_webhook_url": f"{base}/webhook/telegram"},
        ingress={"ingress_port": port},
        pipeline={"pipeline_url": pipeline.base_url, "gateway_public_url": base},
    )  # fmt: skip
    mix = parse_mix("text=0.8,command=0.1,callback=0.1")
    req = LoadRequest(f"{base}/webhook/telegram", emu.api_url, chats=20, rate=30, duration=2,
                      mix=mix, secret=SECRET, pipeline=pipeline.base_url, wait=30)  # fmt: skip
    async with running(*all_roles(cfg)):
        await wait_for(lambda: _up(f"{base}/healthz"), message="the ingress")
        report = await run_load(req, connect=lambda: connect(redis_url), keys=cfg.keys)

    assert report.planned == 60 and report.sent == 60 and report.errors == 0
    assert report.unanswered == [] and report.answered == 60
    assert report.unmatched == 0 and len(report.replies) == report.expected_replies
    assert "answerCallbackQuery" in {r.method for r in report.replies}  # the mix's callbacks
    for r in report.replies:
        assert r.pipeline >= 0 and r.limiter >= 0
        assert r.own >= -CLOCK_TOLERANCE, r  # own = total - pipeline - limiter
        assert abs(r.total - (r.pipeline + r.limiter + r.own)) < 1e-9
    from_pipeline = [r for r in report.replies if r.pipeline > 0]
    assert from_pipeline and all(r.pipeline >= PIPELINE_DELAY for r in from_pipeline)
    assert 0.7 <= report.achieved_rate / 30 <= 1.3
    table = render(report)
    assert "gateway own" in table and "60 of 60 update(s) sent" in table


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"updates": 5}', b'{"updates": [1, 2]}', b'{"updates": [' + b"{}," * 1000 + b"{}]}"],
)
async def test_the_emulator_refuses_a_bad_learn_call(emu: Emulator, body: bytes) -> None:
    """``/_emu/learn`` takes a list of at most 1000 Update objects, else 400, nothing learned."""
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.post(f"{emu.api_url}/_emu/learn", content=body)
    assert r.status_code == 400
    assert emu.state.callback_queries == {}


async def test_learned_updates_are_known_but_not_queued(emu: Emulator) -> None:
    """The chat and the callback query of a learned Update are known; nothing is queued."""
    update = {"update_id": 5, "callback_query": {
        "id": "q1", "from": {"id": 42, "is_bot": False, "first_name": "A"},
        "message": {"message_id": 9, "chat": {"id": 42, "type": "private"}, "date": 0},
        "chat_instance": "42", "data": "x"}}  # fmt: skip
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.post(f"{emu.api_url}/_emu/learn", json={"updates": [update]})
    assert r.json() == {"learned": 1}
    assert 42 in emu.state.chats and "q1" in emu.state.callback_queries
    assert emu.state.queue == {}


async def test_the_pipeline_timings_exist_only_with_the_test_endpoints() -> None:
    """``/_ref/timings`` shows what the test endpoints show: absent by default."""
    for enabled, status in ((False, 404), (True, 200)):
        server = ReferencePipelineServer(mode="sync", test_endpoints=enabled)
        await server.start("127.0.0.1", 0)
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                assert (await http.get(f"{server.base_url}/_ref/timings")).status_code == status
        finally:
            await server.stop()
