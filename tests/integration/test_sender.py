"""The sender against the emulator: splitting, error classification, idempotence, results."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.app.roles import make_bot, serve_sender
from gateway.core.contracts import GROUP_SENDERS, OutboundEntry, Reason, Stage, partition_for
from gateway.core.errors import TelegramFatal
from gateway.runtime.consumer import (
    Ack,
    ConsumerConfig,
    Dead,
    Fence,
    Item,
    LeaseLost,
    Marker,
    Publish,
    Retry,
    StreamConsumer,
)
from gateway.runtime.streams import ensure_groups, publish_outbound
from gateway.testkit.emulator import Emulator
from gateway.testkit.emulator.limits import EmulatorLimits
from tests.helpers import (
    BOT_ID,
    BOT_USERNAME,
    TOKEN,
    dead_letters,
    make_config,
    results,
    running,
    wait_for,
)
from workers.sender.bots import SenderBots
from workers.sender.handler import Sender
from workers.sender.limits import Limits
from workers.sender.marks import BLOCKED_TTL
from workers.sender.parts import Resume
from workers.sender.ratelimit import RateLimiter

pytestmark = pytest.mark.integration

CHAT = 1001
OTHER = 1002


@pytest.fixture
def emu(emu: Emulator) -> Emulator:
    """The shared emulator (tests/conftest.py) with the two private chats these tests use."""
    for chat in (CHAT, OTHER):
        emu.add_chat(chat, type="private")
    return emu


def entry(chat: int | str = CHAT, text: str = "hello", **kw: object) -> OutboundEntry:
    payload = kw.pop("payload", {"text": text})
    return OutboundEntry(bot_id=BOT_ID, chat_id=chat, payload=payload, **kw)  # type: ignore[arg-type]


async def publish(redis: aioredis.Redis, cfg: object, *entries: OutboundEntry) -> None:
    await ensure_groups(redis, cfg.keys)  # type: ignore[attr-defined]
    await publish_outbound(redis, cfg.keys, entries)  # type: ignore[attr-defined]


async def test_long_text_is_split_in_order_with_one_result(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    paragraphs = [f"Paragraph {i}: " + "word " * 300 for i in range(6)]
    text = "\n\n".join(paragraphs)
    assert len(text) > 2 * 4096
    e = entry(text=text)
    await publish(redis, cfg, e)
    async with running(lambda stop: serve_sender(cfg, stop)):
        got = await emu.wait_messages(CHAT, 3, timeout=15)
        [res] = await wait_for(lambda: results(redis, cfg), message="result")
    assert all(len(m["text"]) <= 4096 for m in got)
    assert " ".join(m["text"] for m in got).split() == text.split()
    assert res["ok"] == "1" and res["reply_id"] == e.reply_id
    assert res["message_ids"] == str([m["message_id"] for m in got]).replace(" ", "")


async def test_redelivered_entry_is_not_sent_twice(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """The same reply_id published twice (a retried callback, a replay) goes out once."""
    cfg = make_config(redis_url, emu.api_url)
    e = entry(text="only once")
    await publish(redis, cfg, e, e, entry(text="then this"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        await emu.wait_messages(CHAT, 2, timeout=15)
        await wait_for(lambda: _count(redis, cfg, 3), message="3 results")
    assert [m["text"] for m in emu.messages(CHAT)] == ["only once", "then this"]


async def _count(redis: aioredis.Redis, cfg: object, n: int) -> bool:
    return len(await results(redis, cfg)) >= n


async def test_blocked_chat_is_dead_lettered_and_remembered(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    emu.faults.forbid_chat(CHAT)
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, entry(text="first"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
        calls = emu.stats()["requests"].get("sendMessage", 0)
        await publish(redis, cfg, entry(text="second"), entry(chat=OTHER, text="other chat"))
        await emu.wait_messages(OTHER, 1, timeout=10)
        dead = await wait_for(lambda: _dead_n(redis, cfg, 2), message="second dead letter")
    assert [d["reason"] for d in dead] == ["bot_blocked", "bot_blocked"]
    # the second reply to the blocked chat never reached Telegram
    assert emu.stats()["requests"].get("sendMessage", 0) == calls + 1
    res = [r for r in await results(redis, cfg) if r["chat_id"] == str(CHAT)]
    assert [r["ok"] for r in res] == ["0", "0"] and res[0]["error_code"] == "403"


async def _dead_n(redis: aioredis.Redis, cfg: object, n: int) -> list[dict[str, str]]:
    dead = await dead_letters(redis, cfg)
    return dead if len(dead) >= n else []


async def test_chat_not_found_is_permanent(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, entry(chat=999_999, text="nobody"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
    assert dead["reason"] == "chat_not_found" and dead["stage"] == "sender"
    assert emu.stats()["requests"]["sendMessage"] == 1


async def test_5xx_html_is_retried_then_delivered(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    emu.faults.fail_next("sendMessage", 2, status=502)
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, entry(text="through the storm"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        [msg] = await emu.wait_messages(CHAT, 1, timeout=15)
        [res] = await wait_for(lambda: results(redis, cfg), message="result")
    assert msg["text"] == "through the storm"
    assert res["ok"] == "1" and res["attempts"] == "3"


async def test_5xx_past_the_attempt_budget_is_dead_lettered(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    emu.faults.fail_next("sendMessage", 50, status=500)
    cfg = make_config(redis_url, emu.api_url, sender={"sender_max_attempts": 3})
    await publish(redis, cfg, entry(text="doomed"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
    assert dead["reason"] == "retries_exhausted"
    assert emu.stats()["requests"]["sendMessage"] == 3


@pytest.mark.parametrize("status", [409, 413])
async def test_conflict_and_too_large_are_dead_lettered_at_once_not_retried(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, status: int
) -> None:
    """409 and 413 are permanent (gateway.telegram.answers): one request, a dead letter."""
    emu.faults.fail_next("sendMessage", 1, status=status, html=False)
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, entry(text="refused for good"), entry(text="then this"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
        [msg] = await emu.wait_messages(CHAT, 1, timeout=15)
        res = await wait_for(lambda: _results_n(redis, cfg, 2), message="two results")
    assert dead["reason"] == "bad_request" and dead["stage"] == "sender"
    assert msg["text"] == "then this"
    assert emu.stats()["requests"]["sendMessage"] == 2  # the refused one was not retried
    assert [(r["ok"], r["error_code"]) for r in res] == [("0", str(status)), ("1", "")]


async def _results_n(redis: aioredis.Redis, cfg: object, n: int) -> list[dict[str, str]]:
    got = await results(redis, cfg)
    return got if len(got) >= n else []


async def test_flood_wait_holds_only_that_chat(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    emu.faults.flood_chat(CHAT, retry_after=1, count=1)
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, entry(text="flooded"), entry(chat=OTHER, text="free"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        [flooded] = await emu.wait_messages(CHAT, 1, timeout=15)
        await emu.wait_messages(OTHER, 1, timeout=15)
    assert flooded["text"] == "flooded"
    [(flooded_chat, flooded_at)] = emu.faults.floods
    sent = {s["chat_id"]: s["ts"] for s in emu.sent()}
    assert flooded_chat == CHAT
    assert sent[CHAT] - flooded_at >= 1.0  # the chat waited its retry_after...
    assert sent[OTHER] < sent[CHAT]  # ...and the other chat did not wait behind it


async def test_migrated_group_gets_the_message_at_its_new_id(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    old, new = -4001, -1004001
    emu.add_chat(old, type="group", title="Old")
    emu.add_chat(new, type="supergroup", title="New")
    emu.faults.migrate_chat(old, new)
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, entry(chat=old, text="moved"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        [msg] = await emu.wait_messages(new, 1, timeout=15)
    assert msg["text"] == "moved"
    assert emu.messages(old) == []


async def test_expired_entry_is_dead_lettered_not_sent(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, entry(text="too late", deadline=time.time() - 1))
    async with running(lambda stop: serve_sender(cfg, stop)):
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), message="dead letter")
    assert dead["reason"] == "expired"
    assert emu.sent() == []


async def test_photo_document_and_long_caption(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    caption = "Caption sentence. " * 100  # > 1024
    await publish(
        redis,
        cfg,
        entry(
            method="sendPhoto", payload={"photo": "https://example.com/a.png", "caption": caption}
        ),
        entry(method="sendDocument", payload={"document": "BQACAgIAAxkBAAIFCGd5"}),
    )
    async with running(lambda stop: serve_sender(cfg, stop)):
        got = await emu.wait_messages(CHAT, 3, timeout=15)
    assert "photo" in got[0] and len(got[0]["caption"]) <= 1024
    assert "text" in got[1]
    assert (got[0]["caption"] + " " + got[1]["text"]).split() == caption.split()
    assert "document" in got[-1]


async def test_bad_html_is_retried_without_parse_mode(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, entry(payload={"text": "<b>unclosed", "parse_mode": "HTML"}))
    async with running(lambda stop: serve_sender(cfg, stop)):
        [msg] = await emu.wait_messages(CHAT, 1, timeout=15)
    assert msg["text"] == "<b>unclosed"


async def test_unauthorized_stops_the_sender_with_a_clear_error(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    emu.faults.unauthorized(True)
    cfg = make_config(redis_url, emu.api_url)
    await publish(redis, cfg, entry(text="x"))
    stop = asyncio.Event()
    with pytest.raises(TelegramFatal, match="TELEGRAM_BOT_TOKEN"):
        await asyncio.wait_for(serve_sender(cfg, stop), 15)
    # nothing acknowledged: the entry waits for a sender with a good token
    info = await redis.xpending(_stream_of(cfg, CHAT), "senders")
    assert info["pending"] == 1


def _stream_of(cfg: object, chat: int) -> str:
    from gateway.core.contracts import partition_for

    keys = cfg.keys  # type: ignore[attr-defined]
    return keys.outbound(partition_for(chat, keys.partitions, BOT_ID))  # type: ignore[no-any-return]


async def test_paid_broadcasts_lift_the_global_limit(redis: aioredis.Redis, redis_url: str) -> None:
    """100 chats in well under a second, against an emulator enforcing Telegram's limits:
    30/s would need more than 3 s, and only sends that carry allow_paid_broadcast may go
    faster (the emulator answers 429 otherwise)."""
    emu = Emulator(token=TOKEN, bot_username=BOT_USERNAME, limits=EmulatorLimits())
    await emu.start("127.0.0.1", 0)
    try:
        chats = list(range(20_000, 20_100))
        for chat in chats:
            emu.add_chat(chat, type="private")
        cfg = make_config(
            redis_url,
            emu.api_url,
            sender={"sender_paid_broadcast": True, "sender_global_per_second": 1000},
        )
        await publish(redis, cfg, *(entry(chat=c, text="to everyone") for c in chats))
        async with running(lambda stop: serve_sender(cfg, stop)):
            await wait_for(lambda: len(emu.sent()) == 100, timeout=15, message="100 sends")
        sent = emu.sent()
        stats = emu.stats()
    finally:
        await emu.stop()
    stamps = sorted(s["ts"] for s in sent)
    assert stamps[-1] - stamps[0] < 2.0
    assert all(s["paid_broadcast"] for s in sent)
    assert stats["rejected_429"] == 0


def test_global_limit_above_30_needs_paid_broadcasts() -> None:
    from gateway.core.errors import ConfigError
    from gateway.core.settings import SenderSettings, load

    with pytest.raises(ConfigError, match="SENDER_PAID_BROADCAST"):
        load(SenderSettings, sender_global_per_second=100)
    assert (
        load(
            SenderSettings, sender_global_per_second=1000, sender_paid_broadcast=True
        ).sender_global_per_second
        == 1000
    )


async def test_send_command_queues_a_proactive_message(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, tmp_path: object
) -> None:
    """`tg-gateway send` publishes the public envelope; the sender delivers it."""
    import subprocess
    import sys

    from tests.helpers import env_without_gateway_vars

    cfg = make_config(redis_url, emu.api_url)
    env = {**env_without_gateway_vars(), "TELEGRAM_BOT_TOKEN": TOKEN, "REDIS_URL": redis_url}
    for args in (
        ["--chat-id", str(CHAT), "--text", "<b>Sale</b> today", "--parse-mode", "HTML"],
        ["--chat-id", str(CHAT), "--photo", "https://example.com/p.png", "--text", "caption"],
    ):
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "send", *args],
            env=env,
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "queued reply_id=" in proc.stdout
    async with running(lambda stop: serve_sender(cfg, stop)):
        first, second = await emu.wait_messages(CHAT, 2, timeout=15)
    assert first["text"] == "Sale today"  # HTML parsed by "Telegram"
    assert second["caption"] == "caption" and "photo" in second
    [origin] = {
        (await redis.xrange(s))[0][1][b"origin"]
        for s in cfg.keys.all_outbound()
        if await redis.xlen(s)
    }
    assert origin == b"cli"


# --- Bot API outages (issue 9, item 7) ------------------------------------------------


async def test_an_outage_longer_than_the_old_attempt_budget_is_waited_out_in_order(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """12 failed calls in a row (the old budget was 8, ~16 s at the default backoff): the
    reply waits for the Bot API to come back, and the chat's next reply stays behind it."""
    emu.faults.fail_next("sendMessage", 12, status=502)
    # SENDER_MAX_ATTEMPTS unset: until the deadline. Each retry takes the chat's rate
    # budget again: a faster per-chat limit keeps the test short.
    cfg = make_config(redis_url, emu.api_url, sender={"sender_chat_per_second": 50})
    first, second = entry(text="through the outage"), entry(text="and then this")
    await publish(redis, cfg, first, second)
    async with running(lambda stop: serve_sender(cfg, stop)):
        await emu.wait_messages(CHAT, 2, timeout=30)
        res = await wait_for(lambda: _results_n(redis, cfg, 2), message="2 results")
    assert [m["text"] for m in emu.messages(CHAT)] == ["through the outage", "and then this"]
    by_reply = {r["reply_id"]: r for r in res}
    assert by_reply[first.reply_id]["ok"] == "1"
    assert int(by_reply[first.reply_id]["attempts"]) == 13 > 8
    assert await dead_letters(redis, cfg) == []


async def _results_n(redis: aioredis.Redis, cfg: object, n: int) -> list[dict[str, str]]:
    got = await results(redis, cfg)
    return got if len(got) >= n else []


async def test_a_deadline_that_passes_during_an_outage_is_dead_lettered_expired(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    emu.faults.fail_next("sendMessage", 10_000, status=503, html=False)
    cfg = make_config(redis_url, emu.api_url, sender={"sender_chat_per_second": 50})
    await publish(redis, cfg, entry(text="too late", deadline=time.time() + 3))
    async with running(lambda stop: serve_sender(cfg, stop)):
        [dead] = await wait_for(lambda: dead_letters(redis, cfg), timeout=15, message="dead")
    assert dead["reason"] == "expired"
    assert dead["error"].startswith("deadline passed")
    assert emu.stats()["requests"]["sendMessage"] > 8  # the old budget would have stopped
    assert emu.sent() == []


# --- best-effort calls (issue 9, item 15) ---------------------------------------------


async def test_best_effort_calls_that_fail_for_good_are_dropped_not_dead_lettered(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """A typing indicator for a chat that does not exist (or blocked the bot) is nothing
    an operator can act on: logged, a failed result, no dead letter. A real reply still
    is dead-lettered."""
    emu.faults.forbid_chat(OTHER)
    cfg = make_config(redis_url, emu.api_url)
    typing = {"action": "typing"}
    missing = entry(chat=999_999, method="sendChatAction", payload=typing)
    blocked = entry(chat=OTHER, method="sendChatAction", payload=typing)
    real = entry(chat=999_998, text="a real reply to nobody")
    await publish(redis, cfg, missing, blocked, real, entry(text="delivered"))
    async with running(lambda stop: serve_sender(cfg, stop)):
        await emu.wait_messages(CHAT, 1, timeout=15)
        res = await wait_for(lambda: _results_n(redis, cfg, 4), message="4 results")
        dead = await wait_for(lambda: dead_letters(redis, cfg), message="the real one's")
    by_reply = {r["reply_id"]: r for r in res}
    assert by_reply[missing.reply_id]["ok"] == "0"
    assert by_reply[missing.reply_id]["description"].startswith("dropped: chat_not_found")
    assert by_reply[blocked.reply_id]["description"].startswith("dropped: bot_blocked")
    assert [(d["reason"], d["entry"].count(real.reply_id)) for d in dead] == [("chat_not_found", 1)]


# --- fencing: nothing leaves a sender that lost its partition (issue 9, item 11) -------


def fenced_sender(redis: aioredis.Redis, cfg: Any) -> tuple[StreamConsumer, Sender, RateLimiter]:
    """The sender role as ``serve_sender`` builds it, with partition leases, kept at hand
    so a test can freeze its lease renewals and step into its limiter's waits."""
    tg, ss = cfg.telegram, cfg.sender
    limits = Limits(chat_per_second=ss.sender_chat_per_second)
    limiter = RateLimiter(redis, cfg.keys, tg.bot_id, limits)
    sender = Sender(
        redis,
        cfg.keys,
        SenderBots.single(redis, cfg.keys, make_bot(tg), limiter),
        backoff_max=ss.sender_backoff_max,
        name="sender-a",
    )
    consumer = StreamConsumer(
        redis,
        cfg.keys,
        ConsumerConfig(
            role="sender",
            group=GROUP_SENDERS,
            stage=Stage.SENDER,
            streams=cfg.keys.all_outbound(),
            block_ms=ss.sender_block_ms,
            leases=True,
            lease_ttl_ms=cfg.redis.lease_ttl_ms,
        ),
        sender,
        name="sender-a",
    )
    return consumer, sender, limiter


async def _frozen() -> None:
    await asyncio.Event().wait()


async def _budget_taken_for(redis: aioredis.Redis, cfg: Any, chat: int, seconds: float) -> None:
    """The chat's rate budget is spent for ``seconds`` (its GCRA TAT set ahead)."""
    sec, usec = await redis.time()
    tat = sec * 1_000_000 + usec + int(seconds * 1_000_000)
    await redis.set(cfg.keys.rate_chat(BOT_ID, chat), str(tat), px=int(seconds * 1000) + 5000)


@pytest.mark.parametrize("how", ["taken_over", "trust_lapsed"])
async def test_a_sender_whose_lease_goes_while_it_waits_for_budget_sends_nothing(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, how: str
) -> None:
    """The entry was read and waits in its lane for the chat's budget. Meanwhile the
    partition is taken over by another sender (``taken_over``: the Redis lease names
    someone else, though this process still trusts it locally), or this process's own
    trust ends (``trust_lapsed``: a pause, renewals late; Redis still names it). When the
    budget comes, nothing may reach Telegram, and the entry stays pending for the owner.

    The lease goes from inside the limiter's wait, after the budget came and before the
    lane goes on: the moment the test is about, whatever the machine's load (a lease
    taken from outside once came after the wait had ended, and the send was right)."""
    cfg = make_config(redis_url, emu.api_url, redis={"lease_ttl_ms": 60_000})
    await ensure_groups(redis, cfg.keys)
    await _budget_taken_for(redis, cfg, CHAT, 1.0)
    await publish(redis, cfg, entry(text="waits for budget"))
    p = partition_for(CHAT, cfg.keys.partitions, BOT_ID)
    stream = cfg.keys.outbound(p)
    consumer, sender, limiter = fenced_sender(redis, cfg)
    acquire = limiter.acquire
    waits: list[float] = []

    async def lease_goes_during_the_wait(chat_id: int | str, *, counts: bool = True) -> str:
        began = time.monotonic()
        scope = await acquire(chat_id, counts=counts)
        waits.append(time.monotonic() - began)
        assert consumer.leases is not None
        consumer.leases.tick = _frozen  # type: ignore[method-assign]  # no more renewals
        if how == "taken_over":
            await redis.set(cfg.keys.lease("sender", p), "sender-b", px=60_000)
        else:
            consumer.leases.valid_until[p] = 0.0
        return scope

    limiter.acquire = lease_goes_during_the_wait  # type: ignore[method-assign]
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: sender.fenced >= 1, timeout=15, message="the fenced send")
        assert waits and waits[0] > 0.1  # it did wait for the chat's budget
        assert emu.stats()["requests"].get("sendMessage", 0) == 0
        assert emu.sent() == []
        assert await _pending(redis, stream) == 1  # left for the partition's owner
        assert await results(redis, cfg) == []
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=20)


async def _pending(redis: aioredis.Redis, stream: str) -> int:
    return int((await redis.xpending(stream, GROUP_SENDERS))["pending"])


async def test_a_send_cut_short_by_the_end_of_the_grace_is_marked_not_sent_again(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """SIGTERM's grace ends while a request is in flight: Telegram may deliver it whatever
    the sender does next. The lane waits for the answer and writes the sent marker before
    it stops, so the next run (or the partition's next owner) does not send it again."""
    cfg = make_config(redis_url, emu.api_url, consumer={"shutdown_grace_seconds": 0.2})
    e = entry(text="cut short")
    await publish(redis, cfg, e)
    emu.faults.delay("sendMessage", 1.0)
    async with running(lambda stop: serve_sender(cfg, stop)):
        await wait_for(
            lambda: emu.stats()["requests"].get("sendMessage", 0) >= 1,
            message="the request in flight",
        )
    # Leaving the block stopped the sender 0.2 s into a 1 s request.
    await emu.wait_messages(CHAT, 1, timeout=5)  # delivered all the same
    emu.faults.delay("sendMessage", 0)
    p = partition_for(CHAT, cfg.keys.partitions, BOT_ID)
    assert await redis.get(cfg.keys.sent(p, f"{e.reply_id}#0")) is not None
    async with running(lambda stop: serve_sender(cfg, stop)):
        await wait_for(lambda: _count(redis, cfg, 1), message="its result")
    assert [m["text"] for m in emu.messages(CHAT)] == ["cut short"]


# --- the handler as a plain function: an entry and a hand-built Fence in, an outcome out --


def outbound_item(cfg: Any, e: OutboundEntry) -> Item:
    stream = cfg.keys.outbound(partition_for(e.chat_id, cfg.keys.partitions, BOT_ID))
    return Item(stream, "1-0", {k.encode(): v.encode() for k, v in e.to_fields().items()}, 1)


def by_hand_sender(redis: aioredis.Redis, cfg: Any) -> Sender:
    """A ``Sender`` called as a plain function, no consumer around it."""
    limiter = RateLimiter(redis, cfg.keys, BOT_ID, Limits(chat_per_second=100.0))
    return Sender(
        redis,
        cfg.keys,
        SenderBots.single(redis, cfg.keys, make_bot(cfg.telegram), limiter),
        backoff_max=0.5,
        name="by-hand",
    )


async def test_the_sender_handler_is_a_plain_function_of_an_entry_and_its_fence(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """No consumer: a send comes back as its result for the finish to write; a 403 as
    the dead letter's result and the chat's blocked mark, left unwritten by the handler;
    a fence whose owner does not hold the lease lets nothing out."""
    emu.faults.forbid_chat(OTHER)
    cfg = make_config(redis_url, emu.api_url)
    keys = cfg.keys
    sender = by_hand_sender(redis, cfg)
    try:
        hi = outbound_item(cfg, entry(text="hi"))
        sent = await sender(hi, Fence.unfenced(hi.stream))
        assert isinstance(sent, Ack) and sent.marker is None
        [result] = sent.publishes
        assert result.stream == keys.results and result.fields["ok"] == "1"

        no = outbound_item(cfg, entry(chat=OTHER, text="no"))
        refused = await sender(no, Fence.unfenced(no.stream))
        assert isinstance(refused, Dead) and refused.reason is Reason.BOT_BLOCKED
        [failed] = [e for e in refused.effects if isinstance(e, Publish)]
        assert failed.stream == keys.results and failed.fields["ok"] == "0"
        mark = Marker(keys.blocked_chat(BOT_ID, OTHER), BLOCKED_TTL, cache=True)
        assert [e for e in refused.effects if isinstance(e, Marker)] == [mark]
        assert await redis.exists(mark.key) == 0  # the finish writes it, with the ack

        stale = outbound_item(cfg, entry(text="stale"))
        lease = keys.lease("sender", partition_for(CHAT, keys.partitions, BOT_ID))
        theirs = Fence(lease, "sender-b", lambda: 10.0, lambda: True, lambda: True)
        with pytest.raises(LeaseLost):
            await sender(stale, theirs)
        assert [m["text"] for m in emu.messages(CHAT)] == ["hi"]
    finally:
        await sender.bots.aclose()


async def test_a_5xx_ends_the_try_with_a_retry_that_resumes_at_the_failed_part(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """The backoff is the lane's, not a sleep in the handler: a 502 comes back as
    ``Retry`` whose memo says where to go on; the next try, given that memo, sends the
    parts once, in order, and the result counts every call (the failed one too)."""
    cfg = make_config(redis_url, emu.api_url)
    sender = by_hand_sender(redis, cfg)
    text = "\n\n".join(f"Paragraph {i}: " + "word " * 300 for i in range(3))
    try:
        item = outbound_item(cfg, entry(text=text))
        emu.faults.fail_next("sendMessage", 1, status=502)
        first = await sender(item, Fence.unfenced(item.stream))
        assert isinstance(first, Retry), first
        assert 0 <= first.delay <= 0.5
        assert isinstance(first.memo, Resume) and first.memo.index == 0
        assert first.memo.part.failures == 1 and emu.messages(CHAT) == []

        again = dataclasses.replace(item, retries=1, memo=first.memo)
        done = await sender(again, Fence.unfenced(item.stream))
        assert isinstance(done, Ack), done
        [result] = done.publishes
        sent = emu.messages(CHAT)
        assert len(sent) == 2 and " ".join(m["text"] for m in sent).split() == text.split()
        assert result.fields["ok"] == "1" and result.fields["attempts"] == "3"
    finally:
        await sender.bots.aclose()
