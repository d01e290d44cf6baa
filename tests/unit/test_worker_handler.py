"""The worker's handler is a plain function of an entry and a hand-built ``Fence``: no
consumer, no Redis (its one batched read is a fake), the pipeline a fake."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest

import workers.worker.submit
from gateway.core.contracts import Keys, Reason, partition_for, update_fields
from gateway.core.errors import PipelineUnavailable
from gateway.runtime.batching import Command
from gateway.runtime.consumer import Ack, Dead, Fence, Item, LeaseLost, Marker, Publish, Retry
from tests.helpers import BOT_ID, FIXTURES, worker_bots
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


async def handle(
    pipeline: Pipeline, item: Item, f: Fence, options: WorkerOptions | None = None
) -> Any:
    services = WorkerServices(
        redis=None,  # type: ignore[arg-type]  # not reached: the fakes answer
        keys=KEYS,
        calls=Calls(),  # type: ignore[arg-type]
        pipeline=pipeline,
        options=options or WorkerOptions(),
    )
    return await UpdateHandler(services, worker_bots(services), build_dispatcher([]), direct=True)(
        item, f
    )


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
    assert reply.stream == KEYS.outbound(partition_for(chat, KEYS.partitions, BOT_ID))
    assert json.loads(reply.fields["payload"])["text"] == "hello back"
    key = idempotency_key(BOT_ID, UPDATE["update_id"])
    assert outcome.marker == Marker(KEYS.handed(0, key), WorkerOptions().handed_ttl)
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


class DownPipeline(Pipeline):
    """Away: every POST is a 503."""

    async def submit(
        self, message: PipelineMessage, callback_url: str | None, idempotency_key: str
    ) -> dict[str, Any] | None:
        self.posts.append(idempotency_key)
        raise PipelineUnavailable("503 from the pipeline")


async def handle_down(pipeline: Pipeline, item: Item, retry_seconds: float) -> Any:
    options = WorkerOptions(retry_seconds=retry_seconds, delay_notice="")
    return await handle(pipeline, item, fence(valid=True), options)


async def test_a_pipeline_away_is_retried_by_the_lane_with_a_growing_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No sleep in the handler: each try is one POST and a ``Retry`` whose delay is the
    backoff of the tries so far, which the lane counts in ``Item.retries``."""
    asked: list[int] = []

    def backoff(attempt: int, base: float, cap: float) -> float:
        asked.append(attempt)
        return base * 2**attempt

    monkeypatch.setattr(workers.worker.submit, "backoff", backoff)
    pipeline = DownPipeline()
    item = update_item(UPDATE)
    now = time.monotonic()
    delays = []
    for retries in range(4):
        tried = dataclasses.replace(item, retries=retries, since=now)
        outcome = await handle_down(pipeline, tried, retry_seconds=60)
        assert isinstance(outcome, Retry), outcome
        delays.append(outcome.delay)
    assert len(pipeline.posts) == 4
    assert asked == [0, 1, 2, 3]
    assert delays == [0.5, 1.0, 2.0, 4.0]


async def test_a_pipeline_away_past_the_retry_time_dead_letters_with_the_apology() -> None:
    """Once the first try is PIPELINE_RETRY_SECONDS ago, the update is dead-lettered and
    the user's apology goes out with it (an effect of the ``Dead``)."""
    pipeline = DownPipeline()
    first_try = time.monotonic() - 11
    item = dataclasses.replace(update_item(UPDATE), retries=5, since=first_try)
    outcome = await handle_down(pipeline, item, retry_seconds=10)
    assert isinstance(outcome, Dead) and outcome.reason is Reason.PIPELINE_UNAVAILABLE
    assert "gave up after 6 attempts" in outcome.error
    [apology] = [e for e in outcome.effects if isinstance(e, Publish)]
    assert json.loads(apology.fields["payload"])["text"] == WorkerOptions().apology_text


class StatusUrlPipeline(Pipeline):
    """A synchronous reply naming its own receipt URL."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def submit(
        self, message: PipelineMessage, callback_url: str | None, idempotency_key: str
    ) -> dict[str, Any] | None:
        self.posts.append(idempotency_key)
        return {"text": "hello back", "status_url": self.url}


async def test_a_synchronous_reply_s_status_url_is_checked_like_a_callback_s() -> None:
    """Allowed: every entry of the reply carries it. Not allowed (the default list is
    empty): the body is unusable, as a bad attachment would be (``pipeline_bad_reply``)."""
    from gateway.core.status_urls import StatusUrls

    url = "https://crm.example.com/receipts"
    allowed = WorkerOptions(status_urls=StatusUrls.parse(["crm.example.com"]))
    outcome = await handle(StatusUrlPipeline(url), update_item(UPDATE), fence(valid=True), allowed)
    assert isinstance(outcome, Ack)
    [reply] = outcome.publishes
    assert reply.fields["status_url"] == url
    refused = await handle(StatusUrlPipeline(url), update_item(UPDATE), fence(valid=True))
    assert isinstance(refused, Dead) and refused.reason is Reason.PIPELINE_BAD_REPLY
    assert "status_url" in refused.error and "RECEIPTS_STATUS_URL_HOSTS" in refused.error


def test_every_filter_and_handler_of_the_gateway_s_routers_is_a_coroutine() -> None:
    """aiogram runs a plain callable (a magic ``F.data.startswith(...)`` filter among them)
    in a thread per call; the gateway's own routers never pay that hop per update."""
    dp = build_dispatcher([])
    sync: list[str] = []
    for router in dp.chain_tail:
        for name, observer in router.observers.items():
            for handler in observer.handlers:
                for obj in (handler, *(handler.filters or ())):
                    if not obj.awaitable:
                        sync.append(f"{router.name}.{name}: {obj.callback!r}")
    assert not sync
