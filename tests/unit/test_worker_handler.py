"""The worker's handler is a plain function of an entry and a hand-built ``Fence``: no
consumer, no Redis (its one batched read is a fake), the pipeline a fake."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiogram import Bot

from gateway.core.contracts import Keys, Reason, partition_for, update_fields
from gateway.runtime.batching import Command
from gateway.runtime.consumer import Ack, Dead, Fence, Item, LeaseLost, Marker
from tests.helpers import BOT_ID, FIXTURES, TOKEN
from workers.worker.adapter import PipelineMessage
from workers.worker.context import WorkerOptions, WorkerServices
from workers.worker.handler import UpdateHandler, build_dispatcher, idempotency_key

KEYS = Keys("tg", 4)
UPDATE = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())


class Calls:
    """The coalescer's ``run``: nothing handed before, no blocked mark."""

    async def run(self, *commands: Command) -> list[Any]:
        return [0] * len(commands)


class Pipeline:
    """Answers every update with one reply, and counts the POSTs."""

    name = "embedded"  # no typing indicator (it would publish at once)

    def __init__(self) -> None:
        self.posts: list[str] = []

    async def submit(
        self, message: PipelineMessage, callback_url: str | None, idempotency_key: str
    ) -> dict[str, Any] | None:
        self.posts.append(idempotency_key)
        return {"text": "hello back"}

    async def healthy(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


def fence(*, valid: bool) -> Fence:
    return Fence(KEYS.lease("worker", 0), "me", lambda: 10.0, lambda: valid, lambda: valid)


async def handle(pipeline: Pipeline, item: Item, f: Fence) -> Any:
    services = WorkerServices(
        redis=None,  # type: ignore[arg-type]  # not reached: the fakes answer
        keys=KEYS,
        calls=Calls(),  # type: ignore[arg-type]
        pipeline=pipeline,
        options=WorkerOptions(bot_id=BOT_ID),
    )
    bot = Bot(TOKEN)
    try:
        return await UpdateHandler(services, bot, build_dispatcher([]), direct=True)(item, f)
    finally:
        await bot.session.close()


def update_item(update: dict[str, Any]) -> Item:
    chat = update["message"]["chat"]["id"]
    fields = update_fields(
        bot_id=BOT_ID,
        update_id=update["update_id"],
        chat_id=chat,
        source="webhook",
        raw_update=json.dumps(update),
    )
    encoded = {k.encode(): v.encode() if isinstance(v, str) else v for k, v in fields.items()}
    return Item(KEYS.updates(0), "1-0", encoded, 1)


async def test_a_valid_fence_lets_the_update_through_to_its_reply_and_handed_marker() -> None:
    """The pipeline's reply and the handed marker come back as effects for the finish."""
    pipeline = Pipeline()
    outcome = await handle(pipeline, update_item(UPDATE), fence(valid=True))
    assert isinstance(outcome, Ack)
    [reply] = outcome.publishes
    chat = UPDATE["message"]["chat"]["id"]
    assert reply.stream == KEYS.outbound(partition_for(chat, KEYS.partitions))
    assert json.loads(reply.fields["payload"])["text"] == "hello back"
    key = idempotency_key(BOT_ID, UPDATE["update_id"])
    assert outcome.marker == Marker(KEYS.handed(0, key), WorkerOptions(bot_id=BOT_ID).handed_ttl)
    assert pipeline.posts == [key]


async def test_a_fence_no_longer_valid_stops_the_update_before_the_pipeline() -> None:
    """Another worker owns the partition now: no POST, ``LeaseLost`` for the consumer."""
    pipeline = Pipeline()
    with pytest.raises(LeaseLost):
        await handle(pipeline, update_item(UPDATE), fence(valid=False))
    assert pipeline.posts == []


async def test_an_entry_that_is_no_update_is_dead_without_a_fence_check() -> None:
    """A broken entry is dead-lettered whoever holds the lease (the finish is fenced)."""
    pipeline = Pipeline()
    outcome = await handle(
        pipeline, Item(KEYS.updates(0), "1-0", {b"x": b"y"}, 1), fence(valid=False)
    )
    assert isinstance(outcome, Dead) and outcome.reason is Reason.INVALID_ENTRY
