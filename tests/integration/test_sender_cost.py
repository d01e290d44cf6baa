"""What one reply costs the sender (docs/bench-e2e.md): its Redis round trips before the
consumer's finish (the sent marker and the reply record ride the finish's), and its Bot
API request, a JSON POST read without aiogram's models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.app.roles import make_bot
from gateway.core.contracts import OutboundEntry, Reason, partition_for
from gateway.runtime.consumer import Ack, Fence, Item
from gateway.runtime.routing import sent_marker
from gateway.telegram import answers
from gateway.telegram.client import NO_ANSWER, BotApiError
from gateway.telegram.direct import DirectApi
from gateway.testkit.emulator import Emulator
from gateway.testkit.ports import reserve_port
from tests.helpers import BOT_ID, TOKEN, make_config
from workers.sender.bots import SenderBots
from workers.sender.handler import Sender
from workers.sender.limits import Limits
from workers.sender.ratelimit import RateLimiter
from workers.sender.rich import record_value

pytestmark = pytest.mark.integration


class CountingConnection(aioredis.Connection):
    """A connection that counts its writes: one per command, one per pipeline."""

    writes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.writes += 1
        await super().send_packed_command(command, check_health)


def item_of(cfg: Any, e: OutboundEntry) -> Item:
    stream = cfg.keys.outbound(partition_for(e.chat_id, cfg.keys.partitions, BOT_ID))
    return Item(stream, "1-0", {k.encode(): v.encode() for k, v in e.to_fields().items()}, 1)


@pytest.mark.parametrize("chat", [5101, -5102], ids=["private", "group"])
async def test_a_reply_costs_the_sender_three_redis_round_trips_before_its_finish(
    redis_url: str, emu: Emulator, chat: int
) -> None:
    """The first look (the blocked-chat mark, for a group its migration too, and the sent
    marker: one pipeline), the budget (GCRA), the fence. The sent marker and the reply
    record are the outcome's ``Write``s, sent in the finish's round trip. Each of those
    used to be a round trip of its own (measured before: six for a private chat, eight
    for a group, then four, and five with the record)."""
    warm = chat * 10
    for c in (chat, warm):
        emu.add_chat(c, type="group" if c < 0 else "private")
    cfg = make_config(redis_url, emu.api_url)
    pool = aioredis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = aioredis.Redis(connection_pool=pool)
    limiter = RateLimiter(client, cfg.keys, BOT_ID, Limits(global_per_second=1000))
    sender = Sender(
        client,
        cfg.keys,
        SenderBots.single(client, cfg.keys, make_bot(cfg.telegram), limiter),
        backoff_max=0.5,
        name="counted",
        edit_window=3600,
    )
    try:
        first = item_of(cfg, OutboundEntry(bot_id=BOT_ID, chat_id=warm, payload={"text": "a"}))
        assert isinstance(await sender(first, Fence.unfenced(first.stream)), Ack)  # scripts
        await asyncio.sleep(0.05)  # past the global interval (1 ms): no wait, one GCRA call
        CountingConnection.writes = 0
        entry = OutboundEntry(bot_id=BOT_ID, chat_id=chat, payload={"text": "b"})
        reply = item_of(cfg, entry)
        outcome = await sender(reply, Fence.unfenced(reply.stream))
        assert isinstance(outcome, Ack) and outcome.publishes[0].fields["ok"] == "1"
        assert CountingConnection.writes == 3
        [sent] = emu.messages(chat)
        assert sent["text"] == "b"
        marker = sent_marker(cfg.keys, entry, 0)
        record = cfg.keys.reply(BOT_ID, chat, entry.reply_id)
        assert [w.command[:3] for w in outcome.writes] == [
            ("SET", marker, str(sent["message_id"])),
            ("SET", record, record_value(chat, [sent["message_id"]])),
        ]
        assert sender.unmarked[marker] == str(sent["message_id"])  # until a finish wrote it
    finally:
        await sender.bots.aclose()
        await client.aclose()


async def test_the_direct_call_answers_the_result_or_the_error_the_table_reads(
    emu: Emulator,
) -> None:
    """A send's result is Telegram's JSON; a 403, a 429 and an HTML 502 become the
    ``BotApiError`` the answers table decides on, as aiogram's errors were; a refused
    connection is "no answer", and no message carries the token."""
    emu.add_chat(5201, type="private")
    cfg = make_config("redis://127.0.0.1:1/0", emu.api_url)
    bot = make_bot(cfg.telegram)
    api = DirectApi(bot)
    try:
        sent = await api.call("sendMessage", {"chat_id": 5201, "text": "hi"})
        assert isinstance(sent["message_id"], int) and sent["text"] == "hi"

        emu.faults.forbid_chat(5201)
        with pytest.raises(BotApiError) as blocked:
            await api.call("sendMessage", {"chat_id": 5201, "text": "no"})
        decision = answers.classify(blocked.value)
        assert isinstance(decision, answers.Dead) and decision.reason is Reason.BOT_BLOCKED
        emu.faults.unforbid_chat(5201)

        emu.faults.flood_chat(5201, retry_after=3)
        with pytest.raises(BotApiError) as flood:
            await api.call("sendMessage", {"chat_id": 5201, "text": "wait"})
        assert answers.classify(flood.value) == answers.Wait(3)

        emu.faults.fail_next("sendMessage", 1, status=502, html=True)
        with pytest.raises(BotApiError) as html:
            await api.call("sendMessage", {"chat_id": 5201, "text": "later"})
        assert html.value.error_code == NO_ANSWER
        assert isinstance(answers.classify(html.value), answers.Retry)
    finally:
        await bot.session.close()

    nobody = make_config("redis://127.0.0.1:1/0", f"http://127.0.0.1:{reserve_port()}")
    bot = make_bot(nobody.telegram)
    try:
        with pytest.raises(BotApiError) as refused:
            await DirectApi(bot).call("sendMessage", {"chat_id": 1, "text": "x"})
        assert refused.value.error_code == NO_ANSWER
        assert isinstance(answers.classify(refused.value), answers.Retry)
        assert TOKEN not in str(refused.value) and TOKEN.split(":")[1] not in str(refused.value)
    finally:
        await bot.session.close()
