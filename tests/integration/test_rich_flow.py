"""Rich replies through the whole path: emulator -> ingress -> worker -> a real HTTP
pipeline on 127.0.0.1 (scripted by each test) -> callback -> sender -> emulator.

Buttons arrive as an inline keyboard and a press reaches the pipeline; an edit by
reply_id changes the message, a delete removes it, an unknown reply_id gives a failed
result with its reason; hostile bodies get 422 with a reason; "typing…" repeats until
the reply is stored, and no longer than its cap."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.core.contracts import decode_fields
from gateway.core.tokens import sign_route
from gateway.ingress.serve import serve_ingress_role
from gateway.testkit.emulator import Emulator
from tests.helpers import BOT_ID, all_roles, dead_letters, make_config, results, running, wait_for

pytestmark = pytest.mark.integration

ALICE = 6123456789
PAY = {"text": "Pay", "callback_data": "pay:yes"}
HELP = {"text": "Help", "url": "https://example.com/help"}


class ScriptedPipeline:
    """``POST /api/messages/`` answered 202; the test posts each callback itself."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.arrived = asyncio.Condition()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/messages/", self._message)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _message(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["webhook_url"] = request.headers["X-Webhook-URL"]
        async with self.arrived:
            self.requests.append(body)
            self.arrived.notify_all()
        return web.json_response({"status": "accepted"}, status=202)

    async def request(self, index: int, timeout: float = 15) -> dict[str, Any]:
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(lambda: len(self.requests) > index), timeout
            )
        return self.requests[index]

    async def callback(self, index: int, body: Any) -> tuple[int, Any]:
        """The pipeline's reply to request ``index``: (status, JSON answer)."""
        assert self._http is not None
        url = (await self.request(index))["webhook_url"]
        async with self._http.post(url, json=body) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def pipeline() -> AsyncIterator[ScriptedPipeline]:
    server = ScriptedPipeline()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_buttons_press_edit_delete_and_an_unknown_reply_id(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ScriptedPipeline
) -> None:
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        emu.user_send(ALICE, "I want to pay")
        status, answer = await pipeline.callback(
            0, {"content": "Pay 10 EUR?", "buttons": [[PAY, HELP]], "reply_to": False}
        )
        assert status == 200
        [reply_id] = answer["reply_ids"]
        [menu] = await emu.wait_messages(ALICE, 1, timeout=15)
        assert menu["reply_markup"] == {"inline_keyboard": [[PAY, HELP]]}
        assert "reply_to_message" not in menu

        # The press reaches the pipeline as the button's data; its answer edits the menu.
        emu.user_press(ALICE, ALICE, menu["message_id"], "pay:yes")
        press = await pipeline.request(1)
        assert press["content"] == "pay:yes"
        assert press["metadata"]["callback_data"] == "pay:yes"
        assert press["metadata"]["update_type"] == "callback_query"
        assert press["metadata"]["message_id"] == menu["message_id"]
        status, _ = await pipeline.callback(1, {"edit": reply_id, "content": "Paid, thank you"})
        assert status == 200

        def edited() -> dict[str, Any] | None:
            now = emu.message(ALICE, menu["message_id"])
            return now if now is not None and now["text"] == "Paid, thank you" else None

        now = await wait_for(edited, timeout=15, message="the edited menu")
        assert "reply_markup" not in now  # the edit did not repeat the buttons
        await wait_for(lambda: emu.callback_answers(), message="the press answered")

        emu.user_send(ALICE, "forget it")
        status, _ = await pipeline.callback(2, {"delete": reply_id})
        assert status == 200
        await wait_for(
            lambda: emu.message(ALICE, menu["message_id"]) is None, message="the menu deleted"
        )
        status, answer = await pipeline.callback(
            2, {"edit": "u1-0-0123456789abcdef", "content": "?"}
        )
        assert status == 200
        [unknown] = answer["reply_ids"]

        async def failed() -> dict[str, str] | None:
            return next((r for r in await results(redis, cfg) if r["reply_id"] == unknown), None)

        result = await wait_for(failed, timeout=15, message="the unknown edit's result")
    assert result["ok"] == "0" and result["method"] == "editMessageText"
    assert result["description"].startswith(
        "unknown_reply: cannot edit reply u1-0-0123456789abcdef"
    )
    assert [d["reason"] for d in await dead_letters(redis, cfg)] == ["unknown_reply"]
    assert len(emu.messages(ALICE)) == 1  # one message sent; the rest were edits and deletes


HOSTILE = [
    ({"content": "x", "buttons": [[{"text": "x", "callback_data": "a" * 65}]]}, "1-64 bytes"),
    ({"content": "x", "buttons": [[{"text": "x", "url": "javascript:alert(1)"}]]}, "tg://"),
    ({"content": "x", "buttons": [[{"text": "x", "callback_data": "y"}] * 9]}, "per row"),
    ({"content": "x", "buttons": [[{"text": "x", "callback_data": "y"}] * 8] * 13}, "at most 100"),
    ({"content": "x", "buttons": [[{"text": "", "callback_data": "y"}]]}, "non-empty 'text'"),
    ({"content": "x", "buttons": "Pay"}, "list of rows"),
    (
        {"content": "x", "buttons": [[{"text": "x", "callback_data": "y", "pay": True}]]},
        "unsupported",
    ),
    ({"content": "x", "link_preview_options": {"url": "file:///etc/passwd"}}, "link_preview"),
    ({"content": "x", "reply_to": "everyone"}, "reply_to"),
    ({"edit": "x y", "content": "x"}, "reply_id"),
    ({"edit": "r1"}, "new text"),
    ({"delete": ["r1", "r2"]}, "reply_id"),
]


@pytest.mark.parametrize(("body", "reason"), HOSTILE)
async def test_hostile_rich_bodies_get_422_with_a_reason(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, body: Any, reason: str
) -> None:
    cfg = make_config(redis_url, emu.api_url)
    secret = cfg.pipeline.require_secret()
    token = sign_route(secret, bot_id=BOT_ID, chat_id=ALICE, reply_to=1, update_id=5, ttl=60)
    url = f"http://127.0.0.1:{cfg.ingress.ingress_port}/api/delivery/{token}"
    async with running(lambda stop: serve_ingress_role(cfg, stop)), aiohttp.ClientSession() as http:

        async def post() -> tuple[int, Any] | None:
            try:
                async with http.post(url, json=body) as resp:
                    return resp.status, await resp.json()
            except aiohttp.ClientConnectionError:
                return None  # not listening yet

        status, answer = await wait_for(post, message="the ingress's answer")
    assert status == 422, answer
    assert reason in answer["error"]
    assert [await redis.xlen(s) for s in cfg.keys.all_outbound()] == [0] * cfg.keys.partitions


def _typing_before_reply(fields: list[dict[str, str]], update_id: int) -> tuple[int, int]:
    """(typing entries of the update, those after its first non-typing entry)."""
    mine = [f for f in fields if f.get("update_id") == str(update_id)]
    kinds = [f["method"] for f in mine if f["method"] in ("sendChatAction", "sendMessage")]
    first_reply = kinds.index("sendMessage") if "sendMessage" in kinds else len(kinds)
    return kinds.count("sendChatAction"), kinds[first_reply:].count("sendChatAction")


async def _outbound(redis: aioredis.Redis, cfg: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for stream in cfg.keys.all_outbound():
        out += [decode_fields(f) for _, f in await redis.xrange(stream)]
    return out


async def test_typing_repeats_until_the_reply_is_stored_and_never_after_it(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    pipeline: ScriptedPipeline,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("workers.worker.typing_indicator.TYPING_EVERY", 0.1)
    caplog.set_level(logging.DEBUG, logger="workers.worker.typing_indicator")
    cfg = make_config(redis_url, emu.api_url, pipeline={"pipeline_url": pipeline.base_url})
    async with running(*all_roles(cfg)):
        update = emu.user_send(ALICE, "think hard")
        await pipeline.request(0)
        await wait_for(lambda: len(emu.chat_actions(ALICE)) >= 3, timeout=15, message="typing x3")
        status, _ = await pipeline.callback(0, {"content": "Here is my answer"})
        assert status == 200
        await emu.wait_messages(ALICE, 1, timeout=15)
        await wait_for(lambda: "ended: reply stored" in caplog.text, message="typing ended")
        typing, after = _typing_before_reply(await _outbound(redis, cfg), update["update_id"])
    assert typing >= 3 and after == 0
    assert set(emu.chat_actions(ALICE)) == {"typing"}


async def test_typing_stops_at_its_cap_when_no_reply_comes(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    pipeline: ScriptedPipeline,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("workers.worker.typing_indicator.TYPING_EVERY", 0.1)
    caplog.set_level(logging.DEBUG, logger="workers.worker.typing_indicator")
    cfg = make_config(
        redis_url,
        emu.api_url,
        pipeline={"pipeline_url": pipeline.base_url, "pipeline_typing_seconds": 0.5},
    )
    async with running(*all_roles(cfg)):
        update = emu.user_send(ALICE, "anyone there?")
        await pipeline.request(0)
        await wait_for(lambda: "ended: cap reached" in caplog.text, message="typing capped")
        typing, _ = _typing_before_reply(await _outbound(redis, cfg), update["update_id"])
    assert 2 <= typing <= 6  # every 0.1 s for 0.5 s: bounded by the cap


async def test_no_typing_when_its_cap_is_zero(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, pipeline: ScriptedPipeline
) -> None:
    cfg = make_config(
        redis_url,
        emu.api_url,
        pipeline={"pipeline_url": pipeline.base_url, "pipeline_typing_seconds": 0},
    )
    async with running(*all_roles(cfg)):
        emu.user_send(ALICE, "hello")
        await pipeline.request(0)
        status, _ = await pipeline.callback(0, {"content": "Hi"})
        assert status == 200
        await emu.wait_messages(ALICE, 1, timeout=15)
    assert emu.chat_actions(ALICE) == []
