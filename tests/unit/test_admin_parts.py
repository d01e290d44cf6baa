"""The parts of /stats and the pipeline pause without Redis: the flag's cached reads, a
paused update's outcome, the retry budget after a pause, the window's extrapolation,
the rendering."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

import gateway.runtime.pause
from gateway.core.contracts import Keys, update_fields
from gateway.runtime.activity import SAMPLE, WINDOW_S, Count, HourStats, _scaled, render_stats
from gateway.runtime.consumer import Fence, Item, Retry
from gateway.runtime.pause import PAUSE_POLL, PauseFlag
from tests.helpers import BOT_ID, FIXTURES, worker_bots
from workers.worker.context import WorkerOptions, WorkerServices
from workers.worker.handler import PAUSED, UpdateHandler, budget_since, build_dispatcher

KEYS = Keys("tg", 2)


class Calls:
    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def run(self, *commands: Any) -> list[Any]:
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return [answer]


async def test_the_flag_is_read_at_most_once_per_refresh() -> None:
    clock = [100.0]
    calls = Calls(1, 0)
    flag = PauseFlag(calls, KEYS.pipeline_paused, clock=lambda: clock[0])
    assert await flag.paused() and await flag.paused()
    assert calls.asked == 1
    clock[0] += gateway.runtime.pause.REFRESH
    assert not await flag.paused()
    assert calls.asked == 2


async def test_a_failed_read_keeps_the_last_known_state() -> None:
    """Redis away (raised or refused): the pause neither starts nor ends by itself."""
    clock = [0.0]
    answers = Calls(1, RedisConnectionError("down"), OSError("gone"))
    flag = PauseFlag(answers, "k", clock=lambda: clock[0])
    assert await flag.paused()
    for _ in range(2):
        clock[0] += 5
        assert await flag.paused()


async def test_this_process_s_own_switch_needs_no_read() -> None:
    calls = Calls()
    flag = PauseFlag(calls, "k")
    flag.known(True)
    assert await flag.paused() and calls.asked == 0


def test_the_retry_budget_starts_again_after_a_pause() -> None:
    item = Item(KEYS.updates(0), "1-0", {}, 1, since=50.0)
    assert budget_since(item) == 50.0
    assert budget_since(dataclasses.replace(item, memo=PAUSED)) == 0.0  # now
    assert budget_since(dataclasses.replace(item, memo=70.0)) == 70.0  # the budget's start


def test_a_full_sample_is_extrapolated_over_the_hour() -> None:
    now_ms = 10_000_000
    rows = [(f"{now_ms - i}-0".encode(), {}) for i in range(3)]
    assert _scaled(3, rows, False, now_ms) == Count(3)
    # SAMPLE entries over the last 6 minutes: ten times that over the hour.
    span_ms = WINDOW_S * 1000 // 10
    full = [(f"{now_ms}-0", {}), (f"{now_ms - span_ms}-0", {})]
    assert _scaled(SAMPLE, full, True, now_ms) == Count(SAMPLE * 10, approx=True)
    assert str(Count(5, approx=True)) == "~5"


def test_render_says_what_is_estimated() -> None:
    st = HourStats(
        updates_in=Count(12000, approx=True),
        replies_sent=Count(7),
        lag={"workers": (3, 1), "senders": (None, 0)},
        dead=Counter({"bot_blocked": 2, "expired": 1}),
        flood_waits=2,
        results_429=1,
    )
    text = render_stats(st)
    assert "updates in: ~12000" in text
    assert "replies sent: 7 (failed: 0)" in text
    assert "lag now: workers 3 (pending 1); senders ? (pending 0)" in text
    assert "dead letters: 3: bot_blocked 2, expired 1" in text
    assert "429s: 3" in text
    assert f"newest {SAMPLE} entries" in text


class Recording:
    """The coalescer's ``run``: nothing handed, no mark; records what it was asked."""

    def __init__(self) -> None:
        self.commands: list[Any] = []

    async def run(self, *commands: Any) -> list[Any]:
        self.commands.extend(commands)
        return [0] * len(commands)


class NoPipeline:
    name = "embedded"

    async def submit(self, *args: Any) -> Any:
        raise AssertionError("a paused worker must not call the pipeline")


async def paused_try(update: dict[str, Any], retries: int) -> tuple[Any, list[str]]:
    """One try of ``update`` while the pipeline is paused: its outcome, the Redis verbs."""
    calls = Recording()
    services = WorkerServices(
        redis=None,  # type: ignore[arg-type]  # not reached: the fakes answer
        keys=KEYS,
        calls=calls,  # type: ignore[arg-type]
        pipeline=NoPipeline(),  # type: ignore[arg-type]
        options=WorkerOptions(),
    )
    services.pause.known(True)
    chat = (update.get("message") or update["callback_query"]["message"])["chat"]["id"]
    fields = update_fields(
        bot_id=BOT_ID,
        update_id=update["update_id"],
        chat_id=chat,
        source="webhook",
        raw_update=json.dumps(update),
    )
    encoded = {k.encode(): v.encode() for k, v in fields.items()}
    item = Item(KEYS.updates(0), "1-0", encoded, 1, retries=retries, since=1.0)
    handler = UpdateHandler(services, worker_bots(services), build_dispatcher([]), direct=True)
    outcome = await handler(item, Fence("k", "me", lambda: 10.0, lambda: True, lambda: True))
    return outcome, [str(c[0]) for c in calls.commands]


async def test_a_paused_update_is_retried_without_reaching_the_pipeline() -> None:
    update = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())
    outcome, _ = await paused_try(update, retries=0)
    assert isinstance(outcome, Retry) and outcome.memo is PAUSED
    assert outcome.delay == PAUSE_POLL


async def test_a_paused_button_press_is_answered_once() -> None:
    """The spinner stops at the first try; the retries while paused answer it no more."""
    update = json.loads((FIXTURES / "updates" / "03_callback_query.json").read_text())
    first, verbs = await paused_try(update, retries=0)
    assert isinstance(first, Retry) and "XADD" in verbs  # the answer, published at once
    later, verbs = await paused_try(update, retries=3)
    assert isinstance(later, Retry) and "XADD" not in verbs
