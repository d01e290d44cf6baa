"""The worker's bots without Redis or HTTP (issue 15): which keys, pipeline, breaker,
admins and texts a bot gets; how they follow the registry; the breaker's open state as
a releasing ``Retry``."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from typing import Any

import pytest

from gateway.core.bot_keys import delivery_key, pipeline_keys
from gateway.core.bots import BotSpec, BotSpecError, BotTable
from gateway.core.contracts import Keys, Reason, update_fields
from gateway.core.errors import PipelineUnavailable
from gateway.core.signing import SigningKeys
from gateway.runtime.bots import BotRegistry
from gateway.runtime.consumer import Dead, Fence, Item, Publish, Retry
from tests.helpers import FIXTURES, worker_bots
from workers.worker.bots import Pipelines, WorkerBot, WorkerBots
from workers.worker.breaker import CircuitBreaker
from workers.worker.commands import GREETING, greeting_text
from workers.worker.context import WorkerOptions, WorkerServices
from workers.worker.handler import UpdateHandler, build_dispatcher
from workers.worker.pipeline import EmbeddedPipeline, HttpPipeline

KEYS = Keys("tg", 2)
KEY = "whsec_" + base64.b64encode(b"brand-b-" * 4).decode()
UPDATE = json.loads((FIXTURES / "updates" / "01_private_text_message.json").read_text())


def spec(bot_id: int = 7000000002, **kw: Any) -> BotSpec:
    fields: dict[str, Any] = {
        "bot_id": bot_id,
        "token": f"{bot_id}:BrandBtokenBrandBtoken00",
        "name": f"bot-{bot_id}",
        "path_key": f"path-key-of-bot-{bot_id}",
        "source": "file",
        **kw,
    }
    return BotSpec(**fields)


def test_a_bot_s_own_delivery_secret_signs_its_tokens_else_the_setting_s() -> None:
    assert delivery_key(spec(delivery_secret="brand-b-delivery-secret"), b"x" * 16) == (
        b"brand-b-delivery-secret"
    )
    assert delivery_key(spec(), b"default-secret-01") == b"default-secret-01"
    assert delivery_key(spec(), None) is None


def test_a_pipeline_secret_is_standard_webhooks_keys_or_the_bot_is_refused() -> None:
    """Rotation: comma-separated keys all sign. A secret that is no key: one line naming
    the bot and the field, never the value."""
    other = "whsec_" + base64.b64encode(b"rotated!" * 4).decode()
    keys = pipeline_keys(spec(pipeline_secret=f"{KEY}, {other}"))
    assert keys == SigningKeys.parse([KEY, other])
    assert pipeline_keys(spec()) is None
    for bad in ("not-base64-at-all!!", "whsec_" + base64.b64encode(b"short").decode() + "===="):
        with pytest.raises(BotSpecError, match="bot 'bot-7000000002': pipeline_secret") as info:
            spec(pipeline_secret=bad).check()
        assert bad not in str(info.value)


def test_the_greeting_is_the_bot_s_own_with_the_user_s_name() -> None:
    assert greeting_text("Hi {name}, this is C {not a field}.", "Alice") == (
        "Hi Alice, this is C {not a field}."
    )
    assert greeting_text(None, "Bob") == GREETING.replace("{name}", "Bob")


def pipelines() -> Pipelines:
    default = HttpPipeline("http://p1.example:8000/", 5.0)
    return Pipelines(default, CircuitBreaker(), lambda url: HttpPipeline(url, 5.0), CircuitBreaker)


def test_bots_on_one_pipeline_url_share_its_client_and_breaker() -> None:
    """A bot without a URL, or with PIPELINE_URL's, is on the default pipeline; another
    URL is its own client and breaker; its own keys sign on the shared connection pool."""
    p = pipelines()
    default_p, default_b = p.of(spec(1))
    same_p, same_b = p.of(spec(2, pipeline_url="http://p1.example:8000"))
    own_p, own_b = p.of(spec(3, pipeline_url="http://p2.example:8000"))
    keyed_p, keyed_b = p.of(spec(4, pipeline_url="http://p2.example:8000/", pipeline_secret=KEY))
    assert default_p is same_p is p.default and default_b is same_b is p.default_breaker
    assert own_b is keyed_b is not default_b
    assert isinstance(own_p, HttpPipeline) and isinstance(keyed_p, HttpPipeline)
    assert keyed_p is not own_p and keyed_p._pool is own_p._pool
    assert keyed_p._keys == SigningKeys.parse([KEY]) and not own_p._keys
    assert p.breakers() == [default_b, own_b]


class Events:
    def __init__(self) -> None:
        self.built: list[tuple[str, str | None]] = []
        self.gone: list[str] = []

    def on_built(self, wb: WorkerBot, old: WorkerBot | None) -> None:
        self.built.append((wb.name, None if old is None else old.name))

    def on_gone(self, wb: WorkerBot) -> None:
        self.gone.append(wb.name)


async def test_the_worker_s_bots_follow_the_registry() -> None:
    """Built once per record: a new table with the same record keeps the bot (and its
    learned getMe), a new token builds it anew, a bot gone is dropped; admins are its
    own or ADMIN_USER_IDS."""
    registry = BotRegistry.fixed(KEYS, [spec(1, admin_ids=frozenset({7})), spec(2)])
    events = Events()
    made: list[str] = []

    def make_bot(s: BotSpec) -> Any:
        made.append(s.name)
        return object()

    bots = WorkerBots(
        registry,
        pipelines(),
        make_bot=make_bot,
        admin_ids=frozenset({9}),
        delivery_secret=b"default-secret-01",
        on_built=events.on_built,
        on_gone=events.on_gone,
    )
    bots.follow()
    one, two = await bots.get(1), await bots.get(2)
    assert one is not None and two is not None
    assert (one.admin_ids, two.admin_ids) == (frozenset({7}), frozenset({9}))
    assert events.built == [("bot-1", None), ("bot-2", None)]
    rotated = dataclasses.replace(two.spec, token="2:RotatedTokenRotatedToken0")
    table = BotTable.of([dataclasses.replace(one.spec), rotated], 2)
    _swap(registry, table)
    again_one, again_two = await bots.get(1), await bots.get(2)
    assert again_one is not None and again_one.bot is one.bot  # same record: kept
    assert again_two is not None and again_two.bot is not two.bot  # new token: new bot
    assert events.built[-1] == ("bot-2", "bot-2") and made == ["bot-1", "bot-2", "bot-2"]
    _swap(registry, BotTable.of([again_one.spec], 3))
    assert events.gone == ["bot-2"]
    assert await bots.get(2) is None  # fixed registry: no source to ask again


def _swap(registry: BotRegistry, table: BotTable) -> None:
    """What ``BotRegistry._swap`` does once its sources changed."""
    old, registry.table = registry.table, table
    assert registry.on_change is not None
    registry.on_change(old, table)


class DownPipeline(EmbeddedPipeline):
    name = "http"

    def __init__(self) -> None:
        self.posts = 0

    async def submit(self, *args: Any) -> dict[str, Any] | None:
        self.posts += 1
        raise PipelineUnavailable("503")


class Calls:
    async def run(self, *commands: Any) -> list[Any]:
        return [0] * len(commands)


def item(retries: int = 0, since: float = 0.0) -> Item:
    fields = update_fields(
        bot_id=7689012345,
        update_id=UPDATE["update_id"],
        chat_id=UPDATE["message"]["chat"]["id"],
        source="webhook",
        raw_update=json.dumps(UPDATE),
    )
    encoded = {k.encode(): v.encode() if isinstance(v, str) else v for k, v in fields.items()}
    return Item(KEYS.updates(0), "1-0", encoded, 1, retries=retries, since=since)


async def handle(pipeline: DownPipeline, breaker: CircuitBreaker, it: Item, **options: Any) -> Any:
    services = WorkerServices(
        redis=None,  # type: ignore[arg-type]
        keys=KEYS,
        calls=Calls(),  # type: ignore[arg-type]
        pipeline=pipeline,
        options=WorkerOptions(typing_seconds=0, **options),
        breaker=breaker,
    )
    handler = UpdateHandler(services, worker_bots(services), build_dispatcher([]), direct=True)
    return await handler(it, Fence.unfenced(KEYS.updates(0)))


async def test_an_open_breaker_is_a_releasing_retry_without_a_post() -> None:
    """The breaker no longer sleeps inside the handler: while it is open the update goes
    back to its lane (releasing the read capacity) for at least the cooldown left."""
    pipeline, breaker = DownPipeline(), CircuitBreaker(threshold=1, cooldown=30.0)
    first = await handle(pipeline, breaker, item())
    assert isinstance(first, Retry) and first.release and pipeline.posts == 1
    assert breaker.state == "open"
    then = await handle(pipeline, breaker, item(retries=1, since=time.monotonic()))
    assert isinstance(then, Retry) and then.release and then.delay > 25
    assert pipeline.posts == 1  # no POST while open


async def test_an_open_breaker_past_the_retry_time_dead_letters_without_a_probe() -> None:
    pipeline, breaker = DownPipeline(), CircuitBreaker(threshold=1, cooldown=30.0)
    await handle(pipeline, breaker, item())
    old = item(retries=4, since=time.monotonic() - 11)
    outcome = await handle(pipeline, breaker, old, retry_seconds=10)
    assert isinstance(outcome, Dead) and outcome.reason is Reason.PIPELINE_UNAVAILABLE
    assert "circuit open" in outcome.error and pipeline.posts == 1
    assert any(isinstance(e, Publish) for e in outcome.effects)  # the apology


async def test_a_probe_cancelled_mid_post_lets_the_next_update_probe() -> None:
    class Hanging(DownPipeline):
        async def submit(self, *args: Any) -> dict[str, Any] | None:
            self.posts += 1
            await asyncio.Event().wait()
            return None

    clock = [0.0]
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, clock=lambda: clock[0])
    breaker.failure()  # open
    clock[0] = 2.0  # half-open: the next update probes
    pipeline = Hanging()
    task = asyncio.create_task(handle(pipeline, breaker, item()))
    while pipeline.posts == 0:
        await asyncio.sleep(0)
    assert breaker.probing
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not breaker.probing and breaker.wait_time() == 0.0
