"""Many bots through one sender (issue 15): each bot within its own limits, and one bot's
429 storm, revoked token or absence from the registry never slows or stops another."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.app.roles import serve_sender
from gateway.core.bots import BotSpec, BotsSettings
from gateway.core.contracts import GROUP_SENDERS, OutboundEntry
from gateway.core.settings import load
from gateway.runtime import dlq
from gateway.runtime.routing import outbound_stream
from gateway.runtime.streams import ensure_groups, publish_outbound
from gateway.testkit.emulator import Emulator, EmulatorLimits
from gateway.testkit.emulator.core import EmulatorCore
from tests.helpers import (
    BOT_USERNAME,
    TOKEN,
    dead_letters,
    make_config,
    results,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

A, B, C = 7100000001, 7100000002, 7100000003
TOKENS = {
    A: f"{A}:AAAAaaaaAAAAaaaaAAAAaaaa01",
    B: f"{B}:BBBBbbbbBBBBbbbbBBBBbbbb02",
    C: f"{C}:CCCCccccCCCCccccCCCCcccc03",
}
NAMES = {A: "brand-a", B: "brand-b", C: "brand-c"}
C_LIMIT = 20  # bot C's own global_per_second (the others: SENDER_GLOBAL_PER_SECOND, 30)
MARGIN = 0.15  # as tests/integration/test_limits.py: jitter on a shared 2-core machine
SENDER = {"rate_margin": MARGIN, "sender_block_ms": 100}
FULL = 0.8  # "full rate": at least this share of a bot's limit in its busiest second
CHATS = list(range(3000, 3120))  # the same chat ids for every bot (users of three bots)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    """One emulator serving the default bot (idle here) and A, B, C, each with its own
    chats, limits (C: its own 20/s), faults and send log."""
    emulator = Emulator(token=TOKEN, bot_username=BOT_USERNAME)
    for bot_id, token in TOKENS.items():
        per_second = C_LIMIT if bot_id == C else 30
        limits = EmulatorLimits(global_per_second=per_second, chat_per_second=1)
        bot = emulator.add_bot(
            token, username=f"{NAMES[bot_id].replace('-', '_')}_bot", limits=limits
        )
        for chat in CHATS:
            bot.add_chat(chat, type="private")
    await emulator.start("127.0.0.1", 0)
    try:
        yield emulator
    finally:
        await emulator.stop()


def spec(bot_id: int, token: str | None = None) -> BotSpec:
    return BotSpec(
        bot_id=bot_id,
        token=token or TOKENS[bot_id],
        name=NAMES[bot_id],
        path_key=f"path-key-of-{bot_id}",
        webhook_secret=f"webhook-secret-{bot_id}",
        source="redis",
        global_per_second=C_LIMIT if bot_id == C else None,
    )


async def register(redis: aioredis.Redis, cfg: Any, *specs: BotSpec) -> None:
    """What `tg-gateway bots add` (or rotate-token) writes: the bot's Redis record."""
    for s in specs:
        await redis.hset(cfg.keys.bots, str(s.bot_id), orjson.dumps(s.to_record()))


async def setup(redis: aioredis.Redis, redis_url: str, emu: Emulator, **sender: Any) -> Any:
    """The sender's settings (the default bot idle), and bots A, B, C in the registry."""
    cfg = dataclasses.replace(
        make_config(redis_url, emu.api_url, sender={**SENDER, **sender}),
        bots=load(BotsSettings, bots_refresh_seconds=0.2),
    )
    await ensure_groups(redis, cfg.keys)
    await register(redis, cfg, *(spec(b) for b in TOKENS))
    return cfg


def entries(bot_id: int, n: int, tag: str = "") -> list[OutboundEntry]:
    return [
        OutboundEntry(bot_id=bot_id, chat_id=CHATS[i], payload={"text": f"{tag}{bot_id}-{i}"})
        for i in range(n)
    ]


def interleaved(*groups: list[OutboundEntry]) -> list[OutboundEntry]:
    """The bots' entries mixed in the streams, as concurrent traffic puts them."""
    return [e for row in itertools.zip_longest(*groups) for e in row if e is not None]


def sends_between(emu: EmulatorCore, start: float, end: float) -> int:
    return sum(1 for s in emu.sent() if start <= s["ts"] < end)


ON_THE_WIRE = 0.3
"""Seconds after a pausing 429 in which a send may still arrive: the requests other lanes
had on the wire before the sender read that answer (Telegram's too would be let through
or refused on their own); a send the sender *started* during the pause arrives later."""


def paused(emu: EmulatorCore, start: float, end: float) -> bool:
    """No send of ``emu``'s arrived in ``[start + ON_THE_WIRE, end)``, and at most a few
    (those on the wire) before that."""
    early = sends_between(emu, start, start + ON_THE_WIRE)
    return early <= 4 and sends_between(emu, start + ON_THE_WIRE, end) == 0


def at_full_rate(emu: EmulatorCore, limit: int) -> dict[str, Any]:
    """Within its own limit (no 429 of the emulator's, no 1 s window over) and near it."""
    stats = emu.stats()
    assert stats["rejected_429"] == 0
    assert limit * FULL <= stats["max_global_1s"] <= limit, stats
    return stats


async def test_three_bots_each_keep_within_their_own_limit(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """120 replies per bot at once: each bot sends at its own limit (30/s, and C's own
    20/s), measured on the emulator's receive times, no window over, no 429."""
    cfg = await setup(redis, redis_url, emu)
    n = 120
    await publish_outbound(redis, cfg.keys, interleaved(*(entries(b, n) for b in TOKENS)))
    emus = {b: emu.bot(b) for b in TOKENS}
    async with running(lambda stop: serve_sender(cfg, stop)):
        await wait_for(
            lambda: all(len(e.sent()) == n for e in emus.values()), timeout=40, message="sends"
        )
    for bot_id, bot in emus.items():
        at_full_rate(bot, C_LIMIT if bot_id == C else 30)
        for i in (0, n - 1):
            assert [m["text"] for m in bot.messages(CHATS[i])] == [f"{bot_id}-{i}"]


async def test_a_429_storm_on_one_bot_leaves_the_others_at_full_rate(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """Bot A's sends answer 429 (retry_after 2 s) on several chats: A pauses as a whole
    (429s on two chats within a second), B and C send on at their own limits meanwhile,
    and A's replies all go out after its pause."""
    cfg = await setup(redis, redis_url, emu)
    emu_a, emu_b, emu_c = (emu.bot(b) for b in (A, B, C))
    emu_a.faults.flood_global(retry_after=2, count=4)
    n = 120
    await publish_outbound(redis, cfg.keys, interleaved(*(entries(b, n) for b in TOKENS)))
    async with running(lambda stop: serve_sender(cfg, stop)):
        await wait_for(
            lambda: all(len(e.sent()) == n for e in (emu_a, emu_b, emu_c)),
            timeout=60,
            message="every reply of the three bots",
        )
    assert emu_a.stats()["faults_429"] == 4 and emu_a.stats()["rejected_429"] == 0
    first_429 = emu_a.faults.floods[0][1]
    # A paused as a whole: nothing of A's went out in the 2 s after its second 429...
    second_429 = emu_a.faults.floods[1][1]
    assert paused(emu_a, second_429, second_429 + 1.9), emu_a.sent()
    # ...while B and C kept their own rate through A's storm.
    for bot, limit in ((emu_b, 30), (emu_c, C_LIMIT)):
        at_full_rate(bot, limit)
        window = sends_between(bot, first_429, first_429 + 2.0)
        assert window >= 2 * limit * FULL * (1 - MARGIN), (window, limit)
    assert int(await redis.get(cfg.keys.counter("flood_waits"))) == 4


async def test_a_paused_bot_holds_no_read_capacity_of_the_others(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """Bot A's 429s pause it as a whole for 4 s with 100 of its replies ahead of B's 60 in
    the streams and room for 16 in flight: A's waiting lanes give their room up
    (SENDER_MAX_WAITING), so B's replies are read and sent at B's own rate during A's
    pause, and A's go out after it."""
    cfg = await setup(redis, redis_url, emu, sender_max_in_flight=16)
    emu_a, emu_b = emu.bot(A), emu.bot(B)
    emu_a.faults.flood_global(retry_after=4, count=2)
    await publish_outbound(redis, cfg.keys, [*entries(A, 100), *entries(B, 60)])
    async with running(lambda stop: serve_sender(cfg, stop)):
        await wait_for(lambda: len(emu_b.sent()) == 60, timeout=20, message="B's replies")
        await wait_for(lambda: len(emu_a.sent()) == 100, timeout=30, message="A's replies")
    paused_at = emu_a.faults.floods[1][1]  # the second chat's 429: the whole bot waits
    assert max(m["ts"] for m in emu_b.sent()) < paused_at + 4.0  # all in A's pause
    at_full_rate(emu_b, 30)
    assert paused(emu_a, paused_at, paused_at + 4.0 - 0.1), emu_a.sent()
    assert emu_a.stats()["rejected_429"] == 0


async def test_a_revoked_token_dead_letters_that_bot_only(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram answers 401 to bot A: its replies become dead letters `bot_unauthorized`
    (its later ones without a call), the role goes on, B and C send at their own limits.
    The log names the bot, never a token."""
    caplog.set_level(logging.INFO)
    cfg = await setup(redis, redis_url, emu)
    emu_a, emu_b, emu_c = (emu.bot(b) for b in (A, B, C))
    # Telegram's own 401 answer to every call of A's (counted per method by the emulator).
    emu_a.faults.fail_next(None, 1_000_000, status=401, html=False)
    n, n_a = 120, 30
    await publish_outbound(
        redis, cfg.keys, interleaved(entries(A, n_a), entries(B, n), entries(C, n))
    )
    async with running(lambda stop: serve_sender(cfg, stop)):
        await wait_for(lambda: _dead(redis, cfg, n_a), timeout=30, message="A's dead letters")
        calls = emu_a.stats()["requests"]["sendMessage"]
        assert 1 <= calls < n_a  # one 401 tells: A's other replies made no call
        await publish_outbound(redis, cfg.keys, entries(A, 10, tag="later-"))
        await wait_for(lambda: _dead(redis, cfg, n_a + 10), timeout=30, message="10 more")
        await wait_for(
            lambda: len(emu_b.sent()) == n and len(emu_c.sent()) == n,
            timeout=40,
            message="B's and C's replies",
        )
    assert emu_a.stats()["requests"]["sendMessage"] == calls  # none for the later 10
    assert emu_a.sent() == []
    at_full_rate(emu_b, 30)
    at_full_rate(emu_c, C_LIMIT)
    dead = await dead_letters(redis, cfg)
    assert {d["reason"] for d in dead} == {"bot_unauthorized"} and len(dead) == n_a + 10
    failed = [r for r in await results(redis, cfg) if r["ok"] == "0"]
    assert len(failed) == n_a + 10 and {r["error_code"] for r in failed} == {"401"}
    said = [r.getMessage() for r in caplog.records if "Telegram answered 401" in r.getMessage()]
    assert len(said) == 1 and f"bot {NAMES[A]} ({A})" in said[0]
    shown = caplog.text + repr(dead) + repr(failed)
    assert all(t.split(":")[1] not in shown for t in TOKENS.values())


async def _dead(redis: aioredis.Redis, cfg: Any, n: int) -> list[dict[str, str]]:
    got = await dead_letters(redis, cfg)
    return got if len(got) >= n else []


async def test_an_entry_of_an_unknown_bot_is_dead_lettered_unknown_bot(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """A bot in no registry source: a dead letter `unknown_bot` with a failed result; the
    known bots' replies around it go out."""
    cfg = await setup(redis, redis_url, emu)
    stranger = OutboundEntry(bot_id=7199999999, chat_id=CHATS[0], payload={"text": "who?"})
    await publish_outbound(redis, cfg.keys, [*entries(A, 1), stranger, *entries(B, 1)])
    async with running(lambda stop: serve_sender(cfg, stop)):
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
        await wait_for(lambda: _results(redis, cfg, 3), message="3 results")
    assert dead["reason"] == "unknown_bot" and dead["stage"] == "sender"
    assert "7199999999" in dead["error"] and stranger.reply_id in dead["entry"]
    by_reply = {r["reply_id"]: r for r in await results(redis, cfg)}
    assert by_reply[stranger.reply_id]["ok"] == "0"
    assert by_reply[stranger.reply_id]["reason"] == "unknown_bot"
    assert [len(emu.bot(b).sent()) for b in (A, B)] == [1, 1]


async def test_a_bot_added_just_after_another_miss_is_not_taken_for_unknown(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """An unknown bot's entry has the registry read its sources (at most once a second);
    bot D, added a moment later, sends its first reply within that second: the sender
    asks once more after the registry's next read instead of taking D for unknown."""
    cfg = await setup(redis, redis_url, emu)
    cfg = dataclasses.replace(cfg, bots=load(BotsSettings, bots_refresh_seconds=60))
    d_id = 7100000004
    d = dataclasses.replace(spec(A), bot_id=d_id, token=f"{d_id}:DDDDddddDDDDddddDDDDdddd04")
    d = dataclasses.replace(d, name="brand-d", path_key="path-key-of-brand-d")
    emu.add_bot(d.token, username="brand_d_bot").add_chat(CHATS[0], type="private")
    stranger = OutboundEntry(bot_id=7199999999, chat_id=CHATS[0], payload={"text": "who?"})
    await publish_outbound(redis, cfg.keys, [stranger])
    async with running(lambda stop: serve_sender(cfg, stop)):
        stream = outbound_stream(cfg.keys, stranger)
        await wait_for(  # read, so looked up: the registry read its sources just now
            lambda: _read(redis, cfg, stream), message="the stranger's entry read"
        )
        await register(redis, cfg, d)
        first = OutboundEntry(bot_id=d_id, chat_id=CHATS[0], payload={"text": "hello from d"})
        await publish_outbound(redis, cfg.keys, [first])
        await wait_for(lambda: emu.bot(d_id).sent(), timeout=10, message="D's reply")
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="the stranger's")
    assert dead["reason"] == "unknown_bot" and stranger.reply_id in dead["entry"]


async def _read(redis: aioredis.Redis, cfg: Any, stream: str) -> bool:
    """The sender read the stream's entry: it is pending, or dead-lettered already."""
    pending = int((await redis.xpending(stream, GROUP_SENDERS))["pending"])
    return pending > 0 or bool(await dead_letters(redis, cfg))


async def _results(redis: aioredis.Redis, cfg: Any, n: int) -> list[dict[str, str]]:
    got = await results(redis, cfg)
    return got if len(got) >= n else []


async def test_a_rotated_token_is_used_after_the_refresh(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A's token is revoked (BotFather's /revoke: the old one answers 401, so A's replies
    are dead letters `bot_unauthorized`); `bots rotate-token` writes the new one; the
    running sender takes it up at its next refresh, and the dead letters requeued (`dlq
    requeue --reason bot_unauthorized`) go out with the new token."""
    caplog.set_level(logging.INFO)
    cfg = await setup(redis, redis_url, emu)
    bot_a = emu.bot(A)
    new_token = emu.rotate_token(A)
    await publish_outbound(redis, cfg.keys, entries(A, 5))
    async with running(lambda stop: serve_sender(cfg, stop)):
        dead = await wait_for(lambda: _dead(redis, cfg, 5), timeout=20, message="dead letters")
        assert {d["reason"] for d in dead} == {"bot_unauthorized"}
        await register(redis, cfg, spec(A, new_token))
        await wait_for(
            lambda: any("a new token" in r.getMessage() for r in caplog.records),
            timeout=10,
            message="the sender's refresh of the registry",
        )
        chosen = await dlq.select(redis, cfg.keys, dlq.Selection(reason="bot_unauthorized"))
        assert await dlq.requeue(redis, cfg.keys, chosen) == 5
        await wait_for(lambda: len(bot_a.sent()) == 5, timeout=20, message="5 sent")
    assert sorted(m["text"] for c in CHATS[:5] for m in bot_a.messages(c)) == sorted(
        f"{A}-{i}" for i in range(5)
    )
    assert await dead_letters(redis, cfg) == []  # the old token, refused, was not used again
    assert new_token.split(":")[1] not in caplog.text
