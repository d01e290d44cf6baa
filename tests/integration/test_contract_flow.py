"""Issue 14's Telegram kinds through the whole path on real Redis and real HTTP: the
emulator's user side -> ingress -> worker -> the reference pipeline (HTTP) -> callback ->
sender -> the emulator's Bot API."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import partition_for, update_fields
from gateway.core.settings import DEFAULT_ALLOWED_UPDATES
from gateway.runtime.streams import ensure_groups
from gateway.testkit.emulator import Emulator
from gateway.testkit.reference.app import ReferencePipelineServer
from tests.helpers import (
    BOT_ID,
    FIXTURES,
    all_roles,
    dead_letters,
    make_config,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

ALICE = 6123456789
BOGDAN = 5987654321  # a business account's owner
BUSINESS = ("business_connection", "business_message", "edited_business_message")


@pytest.fixture(params=["async"])
async def pipeline(request: pytest.FixtureRequest) -> AsyncIterator[ReferencePipelineServer]:
    server = ReferencePipelineServer(mode=request.param, callback_backoff=0.05)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


def config(redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer, **kw: Any) -> Any:
    allowed = [*DEFAULT_ALLOWED_UPDATES, *kw.pop("allowed", ())]
    return make_config(
        redis_url,
        emu.api_url,
        telegram={"telegram_allowed_updates": allowed},
        pipeline={"pipeline_url": pipeline.base_url, **kw},
    )


def events(pipeline: ReferencePipelineServer, name: str) -> list[dict[str, Any]]:
    """The requests the pipeline got for ``metadata.event == name``: their metadata."""
    found = [r["metadata"] for r in pipeline.requests if isinstance(r["metadata"], dict)]
    return [m for m in found if m.get("event") == name]


def contents(pipeline: ReferencePipelineServer) -> list[str]:
    return [r["content"] for r in pipeline.requests]


async def test_a_deep_link_is_greeted_and_reaches_the_pipeline_with_its_start_param(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    cfg = config(redis_url, emu, pipeline)
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="/start summer24_tv")
        [greeting] = await emu.wait_messages(ALICE, 1, timeout=15)
        [request] = await wait_for(lambda: pipeline.requests, 15, message="the deep link")
        emu.user_send(user_id=ALICE, text="/start")  # a plain /start stays the gateway's
        pipeline.delay = 0.5  # long enough to show "typing" (it never follows the reply)
        emu.user_send(user_id=ALICE, text="hello")
        await emu.wait_messages(ALICE, 3, timeout=15)
    assert greeting["text"].startswith("Hello, Alice")
    assert request["content"] == "/start summer24_tv" and request["status"] == 202
    assert request["metadata"]["start_param"] == "summer24_tv"
    assert request["client_id"] == f"telegram_{ALICE}"
    assert contents(pipeline) == ["/start summer24_tv", "hello"]
    assert "start_param" not in pipeline.requests[1]["metadata"]
    texts = [m["text"] for m in emu.messages(ALICE)]
    assert texts[1].startswith("Hello, Alice") and len(texts) == 3  # no reply to the link
    assert "typing" in emu.chat_actions(ALICE)  # for "hello"; none for the link


async def test_block_and_unblock_reach_the_pipeline_as_contact_status(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    cfg = config(redis_url, emu, pipeline, pipeline_contact_status=True)
    mark = cfg.keys.blocked_chat(BOT_ID, ALICE)
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="hi")
        await emu.wait_messages(ALICE, 1, timeout=15)
        emu.user_block(ALICE)
        [blocked] = await wait_for(lambda: events(pipeline, "contact_status"), 15)
        assert await redis.exists(mark)  # the gateway's own mark: replies dead-letter at once
        emu.user_unblock(ALICE)
        await wait_for(lambda: len(events(pipeline, "contact_status")) == 2, 15)
        await wait_for(lambda: _gone(redis, mark), 15, message="the mark cleared")
        emu.user_send(user_id=ALICE, text="I am back, how do I reset my password?")
        replies = await emu.wait_messages(ALICE, 2, timeout=15)
    active = events(pipeline, "contact_status")[1]
    assert (blocked["status"], blocked["previous_status"]) == ("blocked", "active")
    assert (active["status"], active["previous_status"]) == ("active", "blocked")
    assert blocked["user_id"] == ALICE and blocked["update_type"] == "my_chat_member"
    assert [r["content"] for r in pipeline.requests][1:3] == ["", ""]
    assert "question" in replies[1]["text"].lower()
    assert len(emu.messages(ALICE)) == 2  # the events got no reply
    assert await dead_letters(redis, cfg) == []


async def test_contact_status_stays_off_unless_asked(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    cfg = config(redis_url, emu, pipeline)
    mark = cfg.keys.blocked_chat(BOT_ID, ALICE)
    async with running(*all_roles(cfg)):
        emu.user_block(ALICE)
        await wait_for(lambda: redis.exists(mark), 15, message="the block mark")
        emu.user_unblock(ALICE)
        emu.user_send(user_id=ALICE, text="hello")  # after the unblock in the chat's order
        await emu.wait_messages(ALICE, 1, timeout=15)
    assert contents(pipeline) == ["hello"]


@pytest.mark.parametrize("pipeline", ["async", "sync"], indirect=True)
async def test_a_business_messages_reply_goes_through_its_connection(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    cfg = config(redis_url, emu, pipeline, allowed=BUSINESS)
    async with running(*all_roles(cfg)):
        connection = emu.business_connect(BOGDAN)["business_connection"]["id"]
        [connected] = await wait_for(lambda: events(pipeline, "business_connection"), 15)
        sent = emu.business_send(connection, ALICE, "Is the blue kettle in stock?", "Alice")
        [reply] = await emu.wait_messages(ALICE, 1, timeout=15)
        message_id = sent["business_message"]["message_id"]
        emu.business_edit(connection, ALICE, message_id, "Is the red kettle in stock?")
        await emu.wait_messages(ALICE, 2, timeout=15)
    assert connected["business_connection_id"] == connection and connected["user_id"] == BOGDAN
    assert connected["enabled"] is True and connected["can_reply"] is True
    assert reply["business_connection_id"] == connection
    assert reply["from"]["id"] == BOGDAN  # sent on the business account's behalf
    assert reply["sender_business_bot"]["id"] == BOT_ID
    assert reply["reply_to_message"]["message_id"] == message_id
    assert "question" in reply["text"].lower()
    asked = [r for r in pipeline.requests if r["content"].startswith("Is the")]
    assert [r["metadata"]["business_connection_id"] for r in asked] == [connection] * 2
    assert asked[1]["metadata"]["edited"] is True
    assert all(m["business_connection_id"] == connection for m in emu.messages(ALICE))
    if pipeline.mode == "async":  # the typing indicator went to the business chat too
        assert "typing" in emu.chat_actions(ALICE)
    assert await dead_letters(redis, cfg) == []


@pytest.mark.parametrize("enabled", [False, True])
async def test_reactions_reach_the_pipeline_only_when_enabled(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    pipeline: ReferencePipelineServer,
    enabled: bool,
) -> None:
    cfg = config(redis_url, emu, pipeline, allowed=["message_reaction"] if enabled else [])
    async with running(*all_roles(cfg)):
        emu.user_send(user_id=ALICE, text="hi")
        [bot_message] = await emu.wait_messages(ALICE, 1, timeout=15)
        emu.user_react(ALICE, ALICE, bot_message["message_id"], ["👍"])
        emu.user_send(user_id=ALICE, text="thanks")  # behind the reaction, in the chat's order
        await emu.wait_messages(ALICE, 2, timeout=15)
    reactions = events(pipeline, "reaction")
    if not enabled:
        assert reactions == [] and contents(pipeline) == ["hi", "thanks"]
        return
    assert contents(pipeline) == ["hi", "", "thanks"]
    [reaction] = reactions
    assert reaction["message_id"] == bot_message["message_id"]
    assert (reaction["reactions"], reaction["old_reactions"]) == (["👍"], [])
    assert len(emu.messages(ALICE)) == 2  # no reply to the reaction


# --- hostile: malformed variants of each kind, written straight to the updates stream ----


def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "updates" / name).read_text())  # type: ignore[no-any-return]


def _malformed() -> list[tuple[dict[str, Any], str]]:
    """(update, what its dead letter's error says)."""
    out: list[tuple[dict[str, Any], str]] = []
    u = _fixture("10_business_message.json")
    u["business_message"]["business_connection_id"] = "x" * 300  # would overflow the token
    out.append((u, "business_message.business_connection_id must be"))
    u = _fixture("11_edited_business_message.json")
    u["edited_business_message"]["business_connection_id"] = "two words"
    out.append((u, "edited_business_message.business_connection_id must be"))
    u = _fixture("09_business_connection.json")
    u["business_connection"]["id"] = "x" * 200
    out.append((u, "business_connection.id must be"))
    u = _fixture("09_business_connection.json")
    del u["business_connection"]["user"]  # aiogram's model requires it
    out.append((u, "not a Telegram Update"))
    u = _fixture("12_message_reaction.json")
    u["message_reaction"]["new_reaction"] = "👍"
    out.append((u, "not a Telegram Update"))
    u = _fixture("12_message_reaction.json")
    u["message_reaction"]["new_reaction"] = [{"type": "emoji", "emoji": "👍"}] * 40
    out.append((u, "message_reaction.new_reaction is not a list of at most"))
    u = _fixture("06_my_chat_member_bot_blocked.json")
    del u["my_chat_member"]["new_chat_member"]
    out.append((u, "not a Telegram Update"))
    for i, (update, _) in enumerate(out):
        update["update_id"] = 900 + i
    return out


async def test_malformed_variants_are_dead_lettered_with_a_reason_and_the_chat_goes_on(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ReferencePipelineServer
) -> None:
    cfg = config(redis_url, emu, pipeline, pipeline_contact_status=True)
    emu.add_chat(ALICE, type="private")
    malformed = _malformed()
    good = copy.deepcopy(_fixture("01_private_text_message.json"))
    good["update_id"] = 999
    await ensure_groups(redis, cfg.keys)
    stream = cfg.keys.updates(partition_for(ALICE, cfg.keys.partitions, BOT_ID))
    for update in [*(u for u, _ in malformed), good]:
        fields = update_fields(
            bot_id=BOT_ID,
            update_id=update["update_id"],
            chat_id=ALICE,
            source="replay",
            raw_update=orjson.dumps(update),
        )
        await redis.xadd(stream, fields)  # type: ignore[arg-type]
    async with running(*all_roles(cfg)):
        dead = await wait_for(
            lambda: _enough(redis, cfg, len(malformed)), 20, message="dead letters"
        )
        [reply] = await emu.wait_messages(ALICE, 1, timeout=15)  # the worker lived on
    errors = {
        json.loads(d["entry"])["update_id"]: (d["stage"], d["reason"], d["error"]) for d in dead
    }
    for update, why in malformed:
        stage, reason, error = errors[str(update["update_id"])]
        assert (stage, reason) == ("worker", "invalid_entry") and why in error, error
    assert "question" in reply["text"].lower()  # the pipeline's answer to the good one
    assert contents(pipeline) == [good["message"]["text"]]


async def _enough(redis: aioredis.Redis, cfg: Any, n: int) -> list[dict[str, str]]:
    dead = await dead_letters(redis, cfg)
    return dead if len(dead) >= n else []


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)
