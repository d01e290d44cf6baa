"""The whole path on real Redis and real HTTP: emulator → ingress → worker → pipeline → sender."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.testkit.emulator import Emulator
from gateway.testkit.reference.app import ReferencePipelineServer
from gateway.testkit.reference.rules import Category, classify
from tests.helpers import (
    BOT_ID,
    BOT_USERNAME,
    all_roles,
    dead_letters,
    free_port,
    make_config,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

ALICE = 6123456789
GROUP = -1002143658709


@pytest.fixture
async def pipeline() -> AsyncIterator[ReferencePipelineServer]:
    server = ReferencePipelineServer(mode="async", callback_backoff=0.05)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


async def test_embedded_pipeline_answers_a_question(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    async with running(*all_roles(cfg)):
        sent = emu.user_send(user_id=ALICE, text="How do I reset my password?")
        [reply] = await emu.wait_messages(ALICE, 1, timeout=15)
    assert classify("How do I reset my password?") is Category.QUESTION
    assert "question" in reply["text"].lower()
    assert reply["reply_to_message"]["message_id"] == sent["message"]["message_id"]
    assert await dead_letters(redis, cfg) == []


@pytest.mark.parametrize(
    ("command", "expect"),
    [("/start", "Hello, Alice"), ("/help", "/status"), ("/status", "Gateway: ok")],
)
async def test_commands_are_answered_without_the_pipeline(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    pipeline: ReferencePipelineServer,
    command: str,
    expect: str,
) -> None:
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text=command)
        [reply] = await emu.wait_messages(ALICE, 1, timeout=15)
    assert expect in reply["text"]
    assert pipeline.requests == []


async def test_status_details_only_for_admins(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url, worker={"admin_user_ids": [ALICE]})
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="/status")
        emu.user_send(user_id=555, text="/status", first_name="Eve")
        [admin] = await emu.wait_messages(ALICE, 1, timeout=15)
        [other] = await emu.wait_messages(555, 1, timeout=15)
    assert "pending" in admin["text"] and "dead letters" in admin["text"]
    assert "pending" not in other["text"]


async def test_group_commands_with_mentions(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    pipeline: ReferencePipelineServer,
) -> None:
    """/cmd@ThisBot is ours; /cmd@OtherBot is not a command for us (goes to the pipeline)."""
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        emu.user_send(
            user_id=5987654321,
            chat_id=GROUP,
            chat_type="supergroup",
            chat_title="Ops",
            text=f"/help@{BOT_USERNAME}",
            first_name="Bogdan",
        )
        [reply] = await emu.wait_messages(GROUP, 1, timeout=15)
        assert "/status" in reply["text"]
        emu.user_send(
            user_id=5987654321,
            chat_id=GROUP,
            chat_type="supergroup",
            text="/help@some_other_bot",
            first_name="Bogdan",
        )
        await emu.wait_messages(GROUP, 2, timeout=15)
    assert [r["content"] for r in pipeline.requests] == ["/help@some_other_bot"]


async def test_http_pipeline_round_trip_with_callback(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    # Long enough to show "typing" (it never follows the reply): an instant callback can
    # store the reply before the indicator's first try, which then rightly sends nothing.
    pipeline.delay = 0.5
    async with running(*all_roles(cfg)):
        update = emu.user_send(user_id=ALICE, text="I need a human operator please")
        [reply] = await emu.wait_messages(ALICE, 1, timeout=15)
    assert "operator" in reply["text"]
    [request] = pipeline.requests
    assert request["idempotency_key"] == f"tg-{BOT_ID}-{update['update_id']}"
    assert request["client_id"] == f"telegram_{ALICE}"
    assert request["webhook_url"].startswith(f"{cfg.pipeline.gateway_public_url}/api/delivery/")
    assert "typing" in emu.chat_actions(ALICE)


async def test_sync_pipeline_reply_in_response_body(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    server = ReferencePipelineServer(mode="sync")
    await server.start("127.0.0.1", 0)
    try:
        cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": server.base_url})
        async with running(*all_roles(cfg)):
            emu.user_send(user_id=ALICE, text="hello there")
            [reply] = await emu.wait_messages(ALICE, 1, timeout=15)
        assert reply["text"]
        assert len(server.requests) == 1
    finally:
        await server.stop()


async def test_button_press_is_answered_and_forwarded(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="hi")
        [bot_msg] = await emu.wait_messages(ALICE, 1, timeout=15)
        press = emu.user_press(ALICE, ALICE, bot_msg["message_id"], "cancel:4411:yes")
        await emu.wait_messages(ALICE, 2, timeout=15)
        await wait_for(lambda: emu.callback_answers(), message="callback answer")
    assert emu.callback_answers()[0]["callback_query_id"] == press["callback_query"]["id"]
    assert pipeline.requests[-1]["content"] == "cancel:4411:yes"


async def test_pipeline_4xx_dead_letters_and_apologises_once(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    pipeline.faults.fail_next(422, 1)
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="this one is rejected")
        [apology] = await emu.wait_messages(ALICE, 1, timeout=15)
        dead = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
    assert apology["text"] == cfg.worker.apology_text
    assert [(d["stage"], d["reason"]) for d in dead] == [("worker", "pipeline_rejected")]
    assert "422" in dead[0]["error"]
    assert len(emu.messages(ALICE)) == 1


async def test_pipeline_5xx_is_retried_with_the_same_idempotency_key(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    pipeline.faults.fail_next(503, 3)
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="hello after an outage")
        [reply] = await emu.wait_messages(ALICE, 1, timeout=30)
    assert reply["text"] != cfg.worker.apology_text
    assert [r["status"] for r in pipeline.requests] == [503, 503, 503, 202]
    assert len({r["idempotency_key"] for r in pipeline.requests}) == 1
    assert await dead_letters(redis, cfg) == []


async def test_unreachable_pipeline_gives_up_after_the_budget(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(
        redis_url,
        emu.api_url,
        pipeline={
            "pipeline_url": f"http://127.0.0.1:{free_port()}",
            "pipeline_retry_seconds": 1,
            "pipeline_timeout": 0.5,
        },
    )
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="anyone there?")
        [apology] = await emu.wait_messages(ALICE, 1, timeout=15)
        dead = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
    assert apology["text"] == cfg.worker.apology_text
    assert dead[0]["reason"] == "pipeline_unavailable"


async def test_pipeline_timeout_is_retried(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    pipeline.faults.set_delay(1.0)
    cfg = make_config(
        redis_url,
        emu.api_url,
        pipeline={"pipeline_url": pipeline.base_url, "pipeline_timeout": 0.3},
    )
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="slow pipeline")
        await wait_for(lambda: pipeline.arrivals >= 2, timeout=15, message="a retry")
        pipeline.faults.clear()
        [reply] = await emu.wait_messages(ALICE, 1, timeout=20)
    assert reply["text"] != cfg.worker.apology_text


async def test_redelivered_update_is_not_posted_twice(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    """A worker that dies after the pipeline took an update but before XACK: the next
    delivery sees the 'handed' marker and does not POST again."""
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="only once please")
        await emu.wait_messages(ALICE, 1, timeout=15)
        # simulate the crash window: put the handled entry back as if never acknowledged
        for stream in cfg.keys.all_updates():
            for _, fields in await redis.xrange(stream):
                await redis.xadd(stream, fields)
        await wait_for(lambda: _all_acked(redis, cfg), message="re-handled")
    assert pipeline.arrivals == 1
    assert len(emu.messages(ALICE)) == 1


async def _all_acked(redis: aioredis.Redis, cfg: object) -> bool:
    """Every group of every updates stream has read and acknowledged everything."""
    keys = cfg.keys  # type: ignore[attr-defined]
    for stream in keys.all_updates():
        info = await redis.xinfo_groups(stream)
        if any(g["lag"] or g["pending"] for g in info):
            return False
    return True


async def test_breaker_spares_a_dead_pipeline_and_users_get_one_delay_note(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    pipeline.faults.fail_next(503, 1000)
    cfg = make_config(
        redis_url,
        emu.api_url,
        pipeline={
            "pipeline_url": pipeline.base_url,
            "pipeline_breaker_threshold": 2,
            "pipeline_breaker_cooldown": 1.0,
            "pipeline_delay_notice": "We are a bit slow right now, your message is queued.",
            "pipeline_delay_notice_after": 0,
            "pipeline_retry_seconds": 60,
        },
    )
    async with running(*all_roles(cfg)):
        for i in range(3):
            emu.user_send(user_id=ALICE, text=f"message {i}")
        for user in (7001, 7002, 7003):
            emu.user_send(user_id=user, text="hello?", first_name="U")
        for chat in (ALICE, 7001, 7002, 7003):
            await emu.wait_messages(chat, 1, timeout=15)
        arrivals_during_outage = pipeline.arrivals
        pipeline.faults.clear()
        await emu.wait_messages(ALICE, 4, timeout=30)
    texts = [m["text"] for m in emu.messages(ALICE)]
    assert texts.count("We are a bit slow right now, your message is queued.") == 1
    # 6 updates over ~1-2 s of outage: the breaker let only a few calls through
    assert arrivals_during_outage <= 8, arrivals_during_outage
