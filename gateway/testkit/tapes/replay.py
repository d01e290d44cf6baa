"""Feeding a tape's updates into a running gateway: webhook or updates stream, timed.

``plan`` turns a tape's updates into steps (an offset in seconds, a fresh ``update_id``)
under a ``Timing``: the original gaps, a speed factor, a cap on gaps, a constant rate, as
fast as possible, repeated ``loops`` times. Fresh ids keep the dedupe window from
swallowing a replay; the map (new id -> tape id) turns a capture back into the tape's ids.
With an ``IdMap`` (``--remap-ids``, ``remap.py``) chat and user ids go out in a test range
and come back in the tape's ids too.
``deliver`` runs one lane per chat (one update in flight per chat, chats concurrently), as
Telegram does. ``guard_bot_api`` refuses a target whose sender talks to the real Bot API.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson
import redis.asyncio as aioredis

from gateway.core.contracts import Keys
from gateway.core.errors import GatewayError, UsageError
from gateway.runtime.layout import check_layout
from gateway.runtime.streams import UpdatePublisher
from gateway.testkit.tapes.emulator_chats import (
    REAL_BOT_API_HOSTS,
    chats_to_register,
    is_emulator,
    register_chats,
)
from gateway.testkit.tapes.progress import Progress, progress
from gateway.testkit.tapes.record import Selection, read_window
from gateway.testkit.tapes.remap import IdMap
from gateway.testkit.tapes.tape import Event, Header, Tape, write_tape

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name


class ReplayError(GatewayError):
    """The target did not take a replayed update (after Telegram-like retries)."""


def parse_speed(text: str) -> float:
    """``10x`` -> 10, ``200%`` -> 2, ``1.5`` -> 1.5 (a factor > 0)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(x|%)?\s*", text)
    value = float(m.group(1)) / (100 if m.group(2) == "%" else 1) if m else 0.0
    if not value > 0:
        raise ValueError(f"not a speed: {text!r} (like 10x, 200%, 0.5)")
    return value


@dataclass(frozen=True, slots=True)
class Timing:
    speed: float = 1.0
    max_gap: float | None = None
    rate: float | None = None  # updates per second, overrides the tape's gaps
    fast: bool = False
    loops: int = 1


@dataclass(frozen=True, slots=True)
class Step:
    offset: float  # seconds after the replay started
    loop: int
    update_id: int  # the fresh id sent
    event: Event  # the tape's update event
    sent: Event | None = None  # the update event in test ids (--remap-ids), else the tape's

    @property
    def chat_id(self) -> Any:
        """The tape's chat (lanes, reports)."""
        return self.event.get("chat_id")

    @property
    def target_chat(self) -> Any:
        """The chat id the gateway sees: the tape's, or its test id when remapped."""
        return (self.sent or self.event).get("chat_id")

    def body_update(self) -> dict[str, Any]:
        """The Update as sent (in test ids if remapped), its ``update_id`` the fresh one."""
        return {**(self.sent or self.event)["update"], "update_id": self.update_id}

    def body(self) -> bytes:
        """The Update JSON as received (in test ids if remapped), with its fresh ``update_id``."""
        return orjson.dumps(self.body_update())


def plan(
    tape: Tape,
    timing: Timing,
    sel: Selection | None = None,
    first_id: int = 0,
    ids: IdMap | None = None,
) -> list[Step]:
    """Every step of the replay, in offset order; ids from ``first_id`` (default: the
    wall clock in ms, past any id a deployment has seen from an emulator or a replay);
    with ``ids``, chat and user ids in its test range (``sent``)."""
    updates = [e for e in tape.of_type("update") if sel is None or sel.keep(e)]
    updates.sort(key=lambda e: e["at"])
    next_id = first_id or int(time.time() * 1000)
    steps: list[Step] = []
    offset = 0.0
    for loop in range(timing.loops):
        prev: float | None = None
        for i, e in enumerate(updates):
            if timing.fast:
                gap = 0.0
            elif timing.rate:
                gap = 0.0 if not steps else 1 / timing.rate
            else:
                gap = 0.0 if prev is None else (e["at"] - prev) / timing.speed
                if timing.max_gap is not None:
                    gap = min(gap, timing.max_gap)
            if loop and i == 0 and not timing.fast:
                gap = 1 / timing.rate if timing.rate else 0.0
            offset += max(gap, 0.0)
            prev = e["at"]
            sent = None if ids is None else ids.apply(e)
            steps.append(Step(offset, loop, next_id, e, sent))
            next_id += 1
    return steps


def render_plan(steps: list[Step]) -> str:
    lines = [f"{len(steps)} update(s) over {steps[-1].offset if steps else 0:.2f}s"]
    for s in steps:
        kind = next((k for k in s.event["update"] if k != "update_id"), "")
        chat = f"{s.chat_id}" + (f" -> {s.target_chat}" if s.sent is not None else "")
        lines.append(
            f"  +{s.offset:8.3f}s  chat {chat}  {kind:<15} update {s.event['update_id']}"
            f" -> {s.update_id}" + (f"  (loop {s.loop + 1})" if s.loop else "")
        )
    return "\n".join(lines)


def guard_bot_api(bot_api_url: str, allowed: bool) -> None:
    """Refuse a target whose sender talks to the real Bot API, unless ``allowed``."""
    host = (urlsplit(bot_api_url).hostname or "").lower()
    if host in REAL_BOT_API_HOSTS and not allowed:
        raise UsageError(
            f"the target's Bot API is {host}: a replay would message real people. Point "
            "--bot-api (or TELEGRAM_API_URL) at the emulator, or pass "
            "--i-know-this-messages-real-people"
        )


Send = Callable[[Step], Awaitable[None]]


async def deliver(
    steps: list[Step], send: Send, *, now: Callable[[], float] = time.monotonic
) -> float:
    """Send every step at its offset, one in flight per chat, chats concurrently; returns
    the wall time the replay took."""
    lanes: dict[Any, list[Step]] = {}
    for s in steps:
        lanes.setdefault(s.chat_id, []).append(s)
    start = now()

    async def lane(queue: list[Step]) -> None:
        for s in queue:
            delay = start + s.offset - now()
            if delay > 0:
                await asyncio.sleep(delay)
            await send(s)

    try:
        async with asyncio.TaskGroup() as group:
            for queue in lanes.values():
                group.create_task(lane(queue))
    except BaseExceptionGroup as failed:  # the first lane's error, as the CLI maps it
        raise failed.exceptions[0] from None
    return now() - start


WEBHOOK_CONNECTIONS = 64


def replay_client(connections: int = WEBHOOK_CONNECTIONS) -> aiohttp.ClientSession:
    """The webhook client: at most ``connections`` kept alive; 10 s to connect and 10 s for
    each read, not counting the wait for a free connection (lanes queue for one). aiohttp,
    not httpx: from one process it POSTs ~20x faster (bench/replay.py; httpcore's pool
    rescans every waiting request on each release and probes for trio on each call)."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=10)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def webhook_sender(
    client: aiohttp.ClientSession,
    url: str,
    secret: str | None,
    retries: int = 5,
    on_retry: Callable[[str], None] | None = None,
) -> Send:
    """POST like Telegram: the secret header, retried on 5xx or no answer, with backoff
    (``on_retry`` hears why each try failed: the progress line's errors)."""
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SECRET_HEADER] = secret

    async def send(step: Step) -> None:
        last = ""
        for attempt in range(retries):
            try:
                async with client.post(url, data=step.body(), headers=headers) as r:
                    await r.read()
                    status = r.status
                if status < 300:
                    return
                last = f"HTTP {status}"
                if status < 500:
                    break
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = type(exc).__name__
            if on_retry is not None:
                on_retry(last)
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        raise ReplayError(f"update {step.event['update_id']}: the webhook answered {last}")

    return send


def stream_sender(publisher: UpdatePublisher, bot_id: int) -> Send:
    async def send(step: Step) -> None:
        fresh = await publisher.publish(
            bot_id=bot_id, update_id=step.update_id, chat_id=step.target_chat,
            source="replay", raw_update=step.body(),
        )  # fmt: skip
        if not fresh:
            raise ReplayError(f"update {step.update_id} was already in the dedupe window")

    return send


async def capture(
    redis: aioredis.Redis,
    keys: Keys,
    steps: list[Step],
    since: float,
    timeout: float,
    ids: IdMap | None = None,
) -> tuple[list[Event], list[int]]:
    """The replayed updates, their sends and results, in the tape's update (and, with
    ``ids``, chat and user) ids; waits
    (at most ``timeout``) until every update has a result and every send its result.
    Returns the events and the tape ids still unanswered when the wait ended."""
    back = {s.update_id: s for s in steps}
    deadline = time.monotonic() + timeout
    while True:
        events, _ = await read_window(redis, keys, Selection(since=since), limit=10**6)
        mine = [e for e in events if e.get("update_id") in back]
        answered = {e["update_id"] for e in mine if e["type"] == "result"}
        sent = {e["reply_id"] for e in mine if e["type"] == "send"}
        done = {e["reply_id"] for e in mine if e["type"] == "result"}
        waiting = [s.event["update_id"] for s in steps if s.update_id not in answered]
        if (not waiting and sent <= done) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    out = []
    for e in mine:
        step = back[e["update_id"]]
        e = {**(e if ids is None else ids.back(e)), "update_id": step.event["update_id"]}
        e.pop("bot_id", None)
        if e["type"] == "update":
            e["update"] = {**e["update"], "update_id": step.event["update_id"]}
            e["chat_id"] = step.chat_id
        out.append(e)
    return out, waiting


def capture_header(tape: Tape, started: float) -> Header:
    h = tape.header
    return Header(h.bot_id, h.bot_username, {"kind": "replay-capture"}, (started, time.time()),
                  h.redaction)  # fmt: skip


def write_capture(path: str, tape: Tape, events: list[Event], started: float) -> int:
    return write_tape(path, capture_header(tape, started), events)


# --- the `tg-gateway replay` command ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What ``tg-gateway replay`` was asked (parsed by the CLI)."""

    tape: Tape
    timing: Timing
    selection: Selection
    to: str | None = None  # webhook URL; None: into the updates stream
    secret: str | None = None
    capture: str | None = None
    capture_timeout: float = 30.0
    remap_ids: bool = False
    bot_api: str | None = None  # the target sender's Bot API: chats registered if an emulator
    show_progress: bool = True


def counted(send: Send, bar: Progress) -> Send:
    async def step(s: Step) -> None:
        await send(s)
        bar.advance()

    return step


async def prepare_emulator(steps: list[Step], bot_api: str | None) -> None:
    """When the target's sender talks to an emulator, make every chat sent known to it."""
    if not bot_api:
        return
    async with httpx.AsyncClient(timeout=5.0) as client:
        if not await is_emulator(client, bot_api):
            return
        chats = chats_to_register((s.target_chat, s.body_update()) for s in steps)
        n = await register_chats(client, bot_api, chats)
    print(f"registered {n} chat(s) with the emulator at {bot_api}")


async def replay(
    req: ReplayRequest,
    *,
    bot_id: int,
    connect: Callable[[], aioredis.Redis],
    keys: Keys,
    dedupe_ttl: int,
) -> int:
    """Replay, then (``capture``) write the replies as a tape; 0 done, 1 some unanswered.
    The guard and the bot check have run before: this sends."""
    ids = IdMap(keep=(bot_id, req.tape.header.bot_id)) if req.remap_ids else None
    steps = plan(req.tape, req.timing, req.selection, ids=ids)
    started = time.time()
    redis = connect() if req.to is None or req.capture else None
    try:
        await prepare_emulator(steps, req.bot_api)
        bar = progress("replay", len(steps), unit="updates") if req.show_progress else None
        try:
            if req.to is not None:
                async with replay_client() as client:
                    retried = (lambda _: bar.error()) if bar else None
                    send = webhook_sender(client, req.to, req.secret, on_retry=retried)
                    took = await deliver(steps, counted(send, bar) if bar else send)
            else:
                assert redis is not None
                await check_layout(redis, keys)  # this deployment's partitions, or refuse
                publisher = UpdatePublisher(redis, keys, dedupe_ttl, timeout=10.0)
                send = stream_sender(publisher, bot_id)
                took = await deliver(steps, counted(send, bar) if bar else send)
        finally:
            if bar is not None:
                bar.close()
        print(f"replayed {len(steps)} update(s) in {took:.2f}s")
        if ids is not None:
            print(f"chat and user ids remapped: {len(ids.forward)} id(s) into the test range")
        if not req.capture:
            return 0
        assert redis is not None
        events, waiting = await capture(redis, keys, steps, started - 1, req.capture_timeout,
                                        ids)  # fmt: skip
        write_capture(req.capture, req.tape, events, started)
        print(f"captured {len(events)} event(s) to {req.capture}")
        if waiting:
            shown = ", ".join(map(str, waiting[:10]))
            print(f"no reply within {req.capture_timeout:g}s to update(s) {shown}")
            return 1
        return 0
    finally:
        if redis is not None:
            await redis.aclose()
