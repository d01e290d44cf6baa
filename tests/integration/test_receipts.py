"""Delivery receipts through the real roles (ingress, worker, sender on real Redis), the
Bot API emulator and a receiving HTTP server on 127.0.0.1: each receipt kind from a real
outcome, verified with the reference library (``standardwebhooks``), retried with one
``webhook-id``, sent once, dead-lettered when not taken, and never in the sender's way."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ResponseError
from standardwebhooks.webhooks import Webhook

from gateway.core.contracts import GROUP_RECEIPTS
from gateway.core.receipt_settings import ReceiptSettings
from gateway.core.settings import load
from gateway.core.tokens import sign_route
from gateway.runtime import dlq
from gateway.testkit.emulator import Emulator
from tests.helpers import (
    BOT_ID,
    all_roles,
    dead_letters,
    make_config,
    results,
    running,
    wait_for,
)

pytestmark = pytest.mark.integration

KEY = "whsec_" + base64.b64encode(b"receipts-signing-key-012" * 2).decode()
DELIVERY = "test-delivery-secret-0123"  # make_config's
ALICE, BOB, NOBODY = 5101, 5102, 5999  # NOBODY: a chat the emulator does not know


class Receiver:
    """A CRM's status endpoint: records each request, answers the queued statuses first
    (then 200); while ``hold`` is set it keeps every request open until released."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.taken: list[dict[str, Any]] = []  # bodies answered 2xx
        self.hold: asyncio.Event | None = None
        self.open = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((dict(request.headers), body))
        if self.hold is not None:
            self.open += 1
            try:
                await self.hold.wait()
            finally:
                self.open -= 1
        status = self.statuses.pop(0) if self.statuses else 200
        if 200 <= status < 300:
            self.taken.append(orjson.loads(body))
        return web.json_response({"ok": status < 300}, status=status)

    def kinds(self) -> dict[str, str]:
        """reply chat -> the receipt's type, of the receipts taken."""
        return {str(b["data"]["chat_id"]): b["type"] for b in self.taken}


async def serve(rec: Receiver) -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post("/receipts", rec.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/receipts"
    try:
        yield rec
    finally:
        if rec.hold is not None:
            rec.hold.set()
        await runner.cleanup()


@pytest.fixture
async def crm() -> AsyncIterator[Receiver]:
    async for rec in serve(Receiver()):
        yield rec


@pytest.fixture
async def other_crm() -> AsyncIterator[Receiver]:
    async for rec in serve(Receiver()):
        yield rec


def config(redis_url: str, emu: Emulator, ttl: float = 3600, **receipts: Any) -> Any:
    cfg = make_config(
        redis_url,
        emu.api_url,
        pipeline={"pipeline_signing_keys": KEY},
        sender={"sender_chat_per_second": 50, "outbound_ttl_seconds": ttl},
    )
    return dataclasses.replace(cfg, receipts=load(ReceiptSettings, **receipts))


async def healthy(cfg: Any) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            health = await http.get(f"{cfg.pipeline.gateway_public_url}/healthz")
    except httpx.HTTPError:
        return False
    return health.status_code == 200


async def started(cfg: Any, redis: aioredis.Redis) -> None:
    """The ingress answers and the receipts group exists (created at ``$``: a result
    written before it would get no receipt)."""

    async def ready() -> bool:
        try:
            groups = await redis.xinfo_groups(cfg.keys.results)
        except ResponseError:
            return False
        names = {g["name"].decode() for g in groups}
        return GROUP_RECEIPTS in names and await healthy(cfg)

    await wait_for(ready, timeout=20, message="ingress and the receipts group")


async def callback(cfg: Any, chat_id: int, update_id: int, body: dict[str, Any]) -> httpx.Response:
    token = sign_route(
        DELIVERY.encode(), bot_id=BOT_ID, chat_id=chat_id, reply_to=None, update_id=update_id,
        ttl=60,
    )  # fmt: skip
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{cfg.pipeline.gateway_public_url}/api/delivery/{token}", json=body, timeout=10
        )


def verified(rec: Receiver) -> list[dict[str, Any]]:
    """Every request's body, each verified by the reference library with the key."""
    return [Webhook(KEY).verify(body, headers) for headers, body in rec.seen]


async def test_every_receipt_kind_from_a_real_outcome_signed_and_on_the_results_stream(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, crm: Receiver, other_crm: Receiver
) -> None:
    """Delivered, blocked (403), chat not found (400): one receipt each at RECEIPTS_URL, and
    a reply naming its own status_url (an exact allow-list entry) gets its receipt there."""
    emu.add_chat(ALICE, type="private")
    emu.add_chat(BOB, type="private")
    emu.faults.forbid_chat(BOB)
    own_host = other_crm.url.split("/")[2]
    cfg = config(redis_url, emu, receipts_url=crm.url, receipts_status_url_hosts=own_host)
    async with running(*all_roles(cfg)):
        await started(cfg, redis)
        long_text = "word " * 1200  # two parts: two message ids, one receipt
        replies = {}
        for chat, n, body in (
            (ALICE, 1, {"content": long_text}),
            (BOB, 2, {"content": "hi Bob"}),
            (NOBODY, 3, {"content": "hi?"}),
            (ALICE, 4, {"content": "to the other CRM", "status_url": other_crm.url}),
        ):
            resp = await callback(cfg, chat, n, body)
            assert resp.status_code == 200, resp.text
            replies[n] = resp.json()["reply_ids"][0]
        await wait_for(lambda: len(crm.taken) >= 3 and other_crm.taken, timeout=30)
    assert len(crm.seen) == 3 and len(other_crm.seen) == 1
    bodies = {b["data"]["reply_id"]: b for b in verified(crm) + verified(other_crm)}
    assert set(bodies) == set(replies.values())

    sent = bodies[replies[1]]
    alice_ids = [m["message"]["message_id"] for m in emu.sent() if m["chat_id"] == ALICE]
    assert sent["type"] == "reply.sent" and sent["data"]["parts"] == 2
    assert sent["data"]["message_ids"] == alice_ids[:2]
    assert sent["data"]["update_id"] == 1 and sent["data"]["chat_id"] == ALICE

    blocked = bodies[replies[2]]["data"]
    assert bodies[replies[2]]["type"] == "reply.failed"
    assert (blocked["reason"], blocked["error_code"]) == ("bot_blocked", 403)
    assert blocked["description"] == "Forbidden: bot was blocked by the user"

    missing = bodies[replies[3]]["data"]
    assert bodies[replies[3]]["type"] == "reply.failed"
    assert (missing["reason"], missing["error_code"]) == ("chat_not_found", 400)
    assert "chat not found" in missing["description"]

    assert bodies[replies[4]]["type"] == "reply.sent"
    for headers, _ in crm.seen + other_crm.seen:
        assert headers["webhook-id"].startswith("receipt_u")
    # ... and the same outcome is on the results stream, where the sender wrote it.
    by_reply = {r["reply_id"]: r for r in await results(redis, cfg)}
    assert [by_reply[replies[n]]["status"] for n in (1, 2, 3, 4)] == [
        "sent", "failed", "failed", "sent"
    ]  # fmt: skip
    assert by_reply[replies[2]]["reason"] == "bot_blocked"
    assert by_reply[replies[4]]["status_url"] == other_crm.url
    assert await redis.exists(cfg.keys.receipt(replies[1]))


async def test_an_expired_reply_gets_an_expired_receipt(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, crm: Receiver
) -> None:
    """The reply's deadline (OUTBOUND_TTL_SECONDS) passes before a sender runs."""
    emu.add_chat(ALICE, type="private")
    cfg = config(redis_url, emu, ttl=0.5, receipts_url=crm.url)
    ingress, worker, sender = all_roles(cfg)
    async with running(ingress, worker):
        await started(cfg, redis)
        resp = await callback(cfg, ALICE, 9, {"content": "too late"})
        assert resp.status_code == 200
        await asyncio.sleep(0.6)  # past the deadline: no sender has read it yet
        async with running(sender):
            await wait_for(lambda: crm.taken, timeout=20, message="the receipt")
    [body] = verified(crm)
    assert body["type"] == "reply.expired"
    assert body["data"]["reason"] == "expired" and body["data"]["message_ids"] == []
    assert emu.sent() == []


async def test_a_receiver_failing_twice_gets_one_receipt_with_one_webhook_id(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, crm: Receiver
) -> None:
    """500, 503, then 200: three signed POSTs with the same ``webhook-id``, one receipt
    taken; a repeated result of that reply is not POSTed again (the marker)."""
    emu.add_chat(ALICE, type="private")
    crm.statuses = [500, 503]
    cfg = config(redis_url, emu, receipts_url=crm.url)
    async with running(*all_roles(cfg)):
        await started(cfg, redis)
        resp = await callback(cfg, ALICE, 11, {"content": "hello"})
        reply_id = resp.json()["reply_ids"][0]
        await wait_for(lambda: crm.taken, timeout=30, message="the third try")
        assert len(crm.seen) == 3
        # The same result again (a duplicate entry, as a cluster's retried finish makes).
        [original] = [r for r in await results(redis, cfg) if r["reply_id"] == reply_id]
        again = await redis.xadd(cfg.keys.results, original)  # type: ignore[arg-type]

        async def acked() -> bool:
            [group] = [
                g for g in await redis.xinfo_groups(cfg.keys.results)
                if g["name"] == GROUP_RECEIPTS.encode()
            ]  # fmt: skip
            return bool(group["last-delivered-id"] == again and group["pending"] == 0)

        await wait_for(acked, timeout=10, message="the duplicate handled")
    assert len(crm.seen) == 3 and len(crm.taken) == 1
    ids = {headers["webhook-id"] for headers, _ in crm.seen}
    assert ids == {f"receipt_{reply_id}"}
    assert len({orjson.dumps(b["data"]) for b in verified(crm)}) == 1  # one body, re-signed


async def test_a_hanging_status_url_does_not_hold_the_replies(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, crm: Receiver
) -> None:
    """Every receipt POST hangs: while the first one is open, the same chat's next reply
    (its sender lane) and replies to nine other chats all reach Telegram, and their
    results the stream; released, every receipt arrives."""
    chats = list(range(6001, 6011))
    for chat in chats:
        emu.add_chat(chat, type="private")
    crm.hold = asyncio.Event()
    cfg = config(redis_url, emu, receipts_url=crm.url, receipts_timeout=60)
    async with running(*all_roles(cfg)):
        await started(cfg, redis)
        first = await callback(cfg, chats[0], 100, {"content": "first"})
        assert first.status_code == 200
        await wait_for(lambda: crm.open >= 1, timeout=20, message="a receipt POST hanging")
        for n, chat in enumerate(chats, start=101):  # chats[0] again first: its lane
            assert (await callback(cfg, chat, n, {"content": f"reply {n}"})).status_code == 200
        total = len(chats) + 1
        await wait_for(lambda: len(emu.sent()) == total, timeout=30, message="the replies")
        assert [m["chat_id"] for m in emu.sent()].count(chats[0]) == 2

        async def all_results() -> bool:  # the finish follows the send: not at once
            return len(await results(redis, cfg)) == total

        await wait_for(all_results, timeout=15, message="every result")
        assert crm.open >= 1 and crm.taken == []  # the receipts still hang meanwhile
        crm.hold.set()
        await wait_for(lambda: len(crm.taken) == total, timeout=30, message="the receipts")
    assert {b["data"]["chat_id"] for b in crm.taken} == set(chats)


async def test_a_receipt_not_taken_in_time_is_dead_lettered_and_requeued(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, crm: Receiver
) -> None:
    """503 for RECEIPTS_RETRY_SECONDS: dead letter (stage receipts, receipt_undelivered,
    the result as its entry); `dlq requeue` puts it back and it is POSTed then. A 404
    is a dead letter at once (receipt_rejected)."""
    emu.add_chat(ALICE, type="private")
    emu.add_chat(BOB, type="private")
    crm.statuses = [503] * 1000
    cfg = config(redis_url, emu, receipts_url=crm.url, receipts_retry_seconds=2)
    async with running(*all_roles(cfg)):
        await started(cfg, redis)
        resp = await callback(cfg, ALICE, 21, {"content": "hello"})
        reply_id = resp.json()["reply_ids"][0]
        letters = await wait_for(lambda: dead_letters(redis, cfg), timeout=20)
        [letter] = letters
        assert (letter["stage"], letter["reason"]) == ("receipts", "receipt_undelivered")
        assert letter["stream"] == cfg.keys.results and "503" in letter["error"]
        assert orjson.loads(letter["entry"])["reply_id"] == reply_id
        tries = len(crm.seen)
        assert tries >= 2 and crm.taken == []

        crm.statuses = [404]
        await callback(cfg, BOB, 22, {"content": "hi"})
        await wait_for(lambda: len(crm.seen) == tries + 1, timeout=20)
        rejected = await wait_for(
            lambda: _reasons(redis, cfg, "receipt_rejected"), timeout=10, message="404's letter"
        )
        assert "404" in rejected[0]["error"]

        crm.statuses = []  # the CRM is fixed: 200 from now on
        entries = await dlq.select(redis, cfg.keys, dlq.Selection(reason="receipt_undelivered"))
        assert [e.entry["reply_id"] for e in entries] == [reply_id]
        assert await dlq.requeue(redis, cfg.keys, entries) == 1
        await wait_for(lambda: crm.taken, timeout=20, message="the requeued receipt")
    assert crm.taken[0]["data"]["reply_id"] == reply_id
    assert len(crm.taken) == 1


async def _reasons(redis: aioredis.Redis, cfg: Any, reason: str) -> list[dict[str, str]]:
    return [d for d in await dead_letters(redis, cfg) if d["reason"] == reason]


async def test_receipts_off_creates_no_group_and_posts_nothing(
    redis: aioredis.Redis, redis_url: str, emu: Emulator
) -> None:
    """No RECEIPTS_URL, no allow-list: replies go out, no ``receipts`` group appears."""
    emu.add_chat(ALICE, type="private")
    cfg = config(redis_url, emu)
    async with running(*all_roles(cfg)):
        await wait_for(lambda: healthy(cfg), timeout=20, message="the ingress")
        assert (await callback(cfg, ALICE, 31, {"content": "hi"})).status_code == 200
        await wait_for(lambda: results(redis, cfg), timeout=20)
    groups = {g["name"].decode() for g in await redis.xinfo_groups(cfg.keys.results)}
    assert GROUP_RECEIPTS not in groups


@pytest.mark.parametrize(
    ("hosts", "status_url", "why"),
    [
        ("", "https://crm.example.com/r", "per-reply status URLs are off"),  # the default
        ("*", "file:///etc/passwd", "http:// or https://"),
        ("*", "ftp://crm.example.com/r", "http:// or https://"),
        ("*", "http://10.0.0.1/r", "private address"),
        ("*", "http://169.254.169.254/latest/meta-data/", "private address"),
        ("*", "http://[::1]:8080/r", "private address"),
        ("*", "http://localhost:8080/r", "internal host"),
        ("*", "http://2130706433/r", "not a valid host name"),
        ("*", "https://user:pw@crm.example.com/r", "credentials"),
        ("*", "https://crm.example.com/r#top", "fragment"),
        ("*", 42, "must be a string"),
        ("*", "https://crm.example.com/" + "a" * 2100, "longer than 2048"),
        ("crm.example.com", "https://evil.example.org/r", "not in RECEIPTS_STATUS_URL_HOSTS"),
        ("*.example.com", "http://10.0.0.1/r", "not in RECEIPTS_STATUS_URL_HOSTS"),
    ],
)
async def test_a_hostile_per_reply_status_url_is_refused_422(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    hosts: str,
    status_url: object,
    why: str,
) -> None:
    """Refused with 422 and the reason, and nothing of the reply is queued."""
    from gateway.ingress.serve import serve_ingress_role

    cfg = config(redis_url, emu, receipts_status_url_hosts=hosts)
    async with running(lambda stop: serve_ingress_role(cfg, stop)):
        await wait_for(lambda: healthy(cfg), timeout=20, message="the ingress")
        resp = await callback(cfg, ALICE, 41, {"content": "hi", "status_url": status_url})
        assert resp.status_code == 422, resp.text
        assert why in resp.json()["error"] and "status_url" in resp.json()["error"]
        ok = await callback(cfg, ALICE, 42, {"content": "hi"})  # without one: as before
        assert ok.status_code == 200
    queued = [e for s in cfg.keys.all_outbound() for e in await redis.xrange(s)]
    assert len(queued) == 1 and queued[0][1][b"status_url"] == b""


async def test_a_wildcard_allowed_name_is_not_connected_to_an_internal_address(
    crm: Receiver,
) -> None:
    """The resolver drops addresses that are not public for a host no exact entry (and
    not RECEIPTS_URL) names: ``localhost`` resolves to 127.0.0.1, so nothing is sent."""
    from gateway.core.signing import SigningKeys
    from workers.receipts.post import AddressRefused, ReceiptPoster

    url = crm.url.replace("127.0.0.1", "localhost")
    poster = ReceiptPoster(SigningKeys.parse([KEY]), 5.0, trusted=lambda host: False)
    trusting = ReceiptPoster(SigningKeys.parse([KEY]), 5.0, trusted=lambda host: True)
    try:
        with pytest.raises(AddressRefused, match="localhost resolves to no public address"):
            await poster.post(url, b"{}", "receipt_x")
        assert crm.seen == []
        assert await trusting.post(url, b'{"a": 1}', "receipt_x") == 200
    finally:
        await poster.aclose()
        await trusting.aclose()
    [(headers, body)] = crm.seen
    assert Webhook(KEY).verify(body, headers) == {"a": 1}
