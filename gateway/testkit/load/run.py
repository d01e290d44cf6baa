"""Driving a load: the updates through the webhook at the target rate, then the replies
collected (results stream, the emulator's call log, the pipeline's timings), each wait
bounded and every one of them cut short by ``stop`` (Ctrl-C: a partial report)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from gateway.core.contracts import Keys, decode_fields
from gateway.core.tasks import cancel_and_wait
from gateway.testkit.load.measure import Calls, Inbound, Reply, answer, decompose, pipeline_times
from gateway.testkit.load.synth import REPLIES, Synthetic, synthesize
from gateway.testkit.tapes.replay import SECRET_HEADER, Step, deliver, guard_bot_api

HTTP_TIMEOUT = 10.0  # one webhook POST, one emulator or pipeline read
POST_RETRIES = 5  # a 5xx or no answer, as Telegram retries (replay's ``webhook_sender``)
REDIS_TIMEOUT = 10.0  # one read of the results stream
LEARN_BATCH = 500  # Updates per /_emu/learn call (the emulator takes up to 1000)
CONNECTIONS = 256  # webhook connections at most (the ingress's default limit is 1000)


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What ``tg-gateway load`` was asked (parsed by the CLI)."""

    to: str  # the gateway's webhook URL
    bot_api: str  # the emulator's base URL (its call log is the Bot API side's clock)
    chats: int
    rate: float
    duration: float
    mix: dict[str, float]
    secret: str | None = None
    pipeline: str | None = None  # the reference pipeline's base URL (/_ref/timings)
    wait: float = 30.0  # most seconds to wait for the replies after the last update


@dataclass(slots=True)
class LoadReport:
    target_rate: float
    planned: int
    sent: int = 0
    errors: int = 0
    took: float = 0.0
    answered: int = 0
    expected_replies: int = 0  # Bot API calls the sent updates are answered with
    replies: list[Reply] = field(default_factory=list)
    unmatched: int = 0
    unanswered: list[int] = field(default_factory=list)
    interrupted: bool = False
    pipeline_measured: bool = False

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.took if self.took > 0 else 0.0


async def run_load(
    req: LoadRequest, *, connect: Callable[[], aioredis.Redis], keys: Keys,
    stop: asyncio.Event | None = None,
) -> LoadReport:  # fmt: skip
    """Send the load, collect its replies; the report (partial when ``stop`` was set)."""
    guard_bot_api(req.bot_api, allowed=False)  # the emulator's clock is the measure
    stop = stop or asyncio.Event()
    now = time.time()
    plan = synthesize(req.chats, req.rate, req.duration, req.mix, int(now * 1000), date=int(now))
    report = LoadReport(req.rate, len(plan))
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        await _learn(http, req.bot_api, (s.step.event["update"] for s in plan))
        since = f"{int(time.time() * 1000) - 1000}-0"
        sent: dict[int, Inbound] = {}
        by_id = {s.update_id: s for s in plan}
        post = _poster(http, req.to, req.secret)

        async def send(step: Step) -> None:
            s = by_id[step.update_id]
            sent[s.update_id] = Inbound(time.time(), s.chat_id, s.kind, s.query_id)
            if not await post(step):
                del sent[s.update_id]
                report.errors += 1

        started = time.monotonic()
        report.interrupted = not await _until(deliver([s.step for s in plan], send), stop)
        report.took, report.sent = time.monotonic() - started, len(sent)
        redis = connect()
        try:
            results, waiting = await _collect(redis, keys, since, sent, req.wait, stop)
        finally:
            await redis.aclose()
        report.unanswered = waiting
        calls = Calls.of(await _get(http, f"{req.bot_api}/_emu/sent"),
                         await _get(http, f"{req.bot_api}/_emu/callback_answers"))  # fmt: skip
        timings: dict[int, float] = {}
        if req.pipeline:
            timings = pipeline_times(await _get(http, f"{req.pipeline}/_ref/timings"))
            report.pipeline_measured = True
    report.replies, report.unmatched = decompose(sent, results, calls, timings)
    report.answered = _answered(sent, results)
    report.expected_replies = sum(REPLIES[i.kind] for i in sent.values())
    return report


async def _until(work: Any, stop: asyncio.Event) -> bool:
    """Run ``work`` until done (True) or ``stop`` is set (False: cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()
        return True
    await cancel_and_wait(task, errors=True)
    return False


def _poster(http: aiohttp.ClientSession, url: str, secret: str | None) -> Any:
    """POST like Telegram (the secret header; a 5xx or no answer retried with backoff);
    the coroutine answers whether the webhook took the update."""
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SECRET_HEADER] = secret

    async def post(step: Step) -> bool:
        for attempt in range(POST_RETRIES):
            try:
                async with http.post(url, data=step.body(), headers=headers) as r:
                    await r.read()
                    if r.status < 300:
                        return True
                    if r.status < 500:
                        return False
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        return False

    return post


async def _learn(http: aiohttp.ClientSession, bot_api: str, updates: Iterable[Any]) -> None:
    """Tell the emulator the load's chats, messages and callback queries (not queued)."""
    batch: list[Any] = []
    for update in [*updates, None]:
        if update is not None:
            batch.append(update)
        if batch and (update is None or len(batch) >= LEARN_BATCH):
            async with http.post(f"{bot_api}/_emu/learn", json={"updates": batch}) as r:
                if r.status != 200:
                    raise _not_emulator(bot_api, r.status)
            batch = []


async def _get(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with http.get(url) as r:
        body = await r.json(content_type=None) if r.status == 200 else None
    if not isinstance(body, list):
        raise _not_emulator(url, r.status)
    return body


def _not_emulator(url: str, status: int) -> Exception:
    from gateway.core.errors import UsageError

    return UsageError(
        f"{url} answered HTTP {status}: --bot-api must be the emulator (tg-gateway emulator) "
        "and --pipeline the reference pipeline with REFERENCE_TEST_ENDPOINTS=true"
    )


async def _collect(
    redis: aioredis.Redis, keys: Keys, since: str, sent: dict[int, Inbound], wait: float,
    stop: asyncio.Event,
) -> tuple[list[dict[str, str]], list[int]]:  # fmt: skip
    """The results of the sent updates, read until each has its replies, ``wait`` seconds
    pass or ``stop`` is set; and the update ids still waiting."""
    deadline = time.monotonic() + wait
    results: list[dict[str, str]] = []
    got: dict[int, int] = {}
    start = since  # inclusive at first, then after the last entry read
    while True:
        async with asyncio.timeout(REDIS_TIMEOUT):
            batch: Any = await redis.xrange(keys.results, start, "+", count=10_000)
        for entry_id, fields in batch:
            start = "(" + (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
            f = decode_fields(fields)
            uid = f.get("update_id") or ""
            if answer(f) and int(uid) in sent:
                results.append(f)
                got[int(uid)] = got.get(int(uid), 0) + 1
        waiting = [u for u, i in sent.items() if got.get(u, 0) < REPLIES[i.kind]]
        if not waiting or stop.is_set() or time.monotonic() > deadline:
            return results, waiting
        if len(batch) < 10_000:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)


def _answered(sent: dict[int, Inbound], results: list[dict[str, str]]) -> int:
    ok: dict[int, int] = {}
    for r in results:
        if r.get("ok") == "1":
            ok[int(r["update_id"])] = ok.get(int(r["update_id"]), 0) + 1
    return sum(1 for u, i in sent.items() if ok.get(u, 0) >= REPLIES[i.kind])


__all__ = ["LoadReport", "LoadRequest", "Synthetic", "run_load"]
