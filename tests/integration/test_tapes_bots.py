"""Tapes of one bot in a deployment of several (issue 15), through ``tg-gateway`` on a
real Redis: ``record --bot`` keeps only that bot's updates, sends and results and its
header names the bot; without ``--bot`` a recording of several bots is refused;
``replay --bot`` feeds the registry bot's own webhook path with its own secret (a real
HTTP server on 127.0.0.1 sees them) or its stream entries, and a tape of another bot
only when ``--bot TAPE_BOT=NAME`` maps it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from gateway.app.cli import main
from gateway.core.bots import BotSpec
from gateway.core.contracts import Keys, OutboundEntry, decode_fields, result_fields, update_fields
from gateway.runtime.layout import ensure_layout
from gateway.testkit.tapes.tape import Header, read_tape, write_tape
from tests.helpers import env_without_gateway_vars, free_port

pytestmark = pytest.mark.integration

KEYS = Keys("tg", 4)
ALPHA = BotSpec(201, "201:" + "A" * 30, "alpha", "alpha-path-key-0001", "a" * 32, "redis")
BRAVO = BotSpec(202, "202:" + "B" * 30, "bravo", "bravo-path-key-0001", "b" * 32, "redis")
CHATS = {ALPHA.bot_id: 6100000001, BRAVO.bot_id: 6100000002}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """An operator's shell: REDIS_URL, no TELEGRAM_BOT_TOKEN, the emulator as Bot API."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("TELEGRAM_API_URL", "http://127.0.0.1:9")


async def seed(redis: aioredis.Redis) -> None:
    """Both bots registered; each with one update, its reply and the reply's result (bravo's
    result written before results named their bot: no bot_id)."""
    await ensure_layout(redis, KEYS, "test")
    now = time.time() - 5
    for n, bot in enumerate((ALPHA, BRAVO)):
        await redis.hset(KEYS.bots, str(bot.bot_id), orjson.dumps(bot.to_record()))
        chat = CHATS[bot.bot_id]
        p = KEYS.partition(bot.bot_id, chat)
        update = {"update_id": 10 + n, "message": {"message_id": 1, "date": int(now),
                  "text": f"hi {bot.name}", "chat": {"id": chat, "type": "private"}}}  # fmt: skip
        await redis.xadd(KEYS.updates(p), update_fields(
            bot_id=bot.bot_id, update_id=10 + n, chat_id=chat, source="webhook",
            raw_update=orjson.dumps(update), received_at=now + n))  # fmt: skip
        entry = OutboundEntry(bot_id=bot.bot_id, chat_id=chat, update_id=10 + n,
                              payload={"text": f"hello from {bot.name}"})  # fmt: skip
        await redis.xadd(KEYS.outbound(p), entry.to_fields())  # type: ignore[arg-type]
        result = result_fields(reply_id=entry.reply_id, chat_id=chat, method="sendMessage",
                               ok=True, message_ids=[2], attempts=1, queue_latency_ms=1,
                               send_latency_ms=2, update_id=10 + n,
                               bot_id=bot.bot_id if bot is ALPHA else None)  # fmt: skip
        await redis.xadd(KEYS.results, result)


def only_line(err: str) -> str:
    """The one error line (a progress line may stand before it)."""
    lines = [
        line for line in err.strip().splitlines() if not line.startswith(("record:", "replay:"))
    ]
    assert len(lines) == 1, err
    return lines[0]


async def cli(*args: str) -> int:
    """``tg-gateway ARGS`` in this process (its own event loop, in a thread)."""
    return await asyncio.to_thread(main, list(args))


@pytest.mark.usefixtures("env")
async def test_record_keeps_one_bot_s_events_and_names_it(
    redis: aioredis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await seed(redis)
    for bot in (ALPHA, BRAVO):
        out = tmp_path / f"{bot.name}.jsonl"
        assert await cli("record", "--out", str(out), "--no-redact", "--bot", bot.name) == 0
        tape = read_tape(out)
        assert (tape.header.bot_id, tape.header.bot_name) == (bot.bot_id, bot.name)
        assert [e["type"] for e in tape.events] == ["update", "send", "result"]
        assert {e["chat_id"] for e in tape.events} == {CHATS[bot.bot_id]}
        assert tape.of_type("send")[0]["payload"]["text"] == f"hello from {bot.name}"
    by_id = tmp_path / "by-id.jsonl"
    assert await cli("record", "--out", str(by_id), "--bot", str(BRAVO.bot_id)) == 0
    assert read_tape(by_id).header.bot_name == "bravo"
    capsys.readouterr()

    mixed = tmp_path / "mixed.jsonl"
    assert await cli("record", "--out", str(mixed)) == 2
    line = only_line(capsys.readouterr().err)
    assert "entries of 2 bots (201, 202)" in line and "--bot" in line, line
    assert not mixed.exists()
    live = subprocess.run(  # --follow handles signals: a process of its own
        [sys.executable, "-m", "gateway", "record", "--follow", "--out", str(mixed)],
        env={**env_without_gateway_vars(), "REDIS_URL": os.environ["REDIS_URL"]},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert live.returncode == 2, live.stderr
    line = only_line(live.stderr)
    assert "2 bots (alpha, bravo)" in line and "--bot" in line, line
    assert await cli("record", "--out", str(mixed), "--bot", "nosuch") == 2
    line = only_line(capsys.readouterr().err)
    assert line == "tg-gateway: --bot nosuch: no such bot (known: alpha, bravo)"


def alpha_tape(path: Path) -> Path:
    chat = CHATS[ALPHA.bot_id]
    update = {"update_id": 5, "message": {"message_id": 1, "date": 1, "text": "hi",
                                          "chat": {"id": chat, "type": "private"}}}  # fmt: skip
    event = {"type": "update", "at": 1.0, "update_id": 5, "chat_id": chat, "source": "webhook",
             "update": update}  # fmt: skip
    write_tape(path, Header(ALPHA.bot_id, bot_name="alpha"), [event])
    return path


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    """A gateway's webhook stand-in: answers 200 and keeps (path, secret header)."""
    seen: list[tuple[str, str]] = []

    async def take(request: web.Request) -> web.Response:
        await request.read()
        seen.append((request.path, request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", take)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.usefixtures("env")
async def test_replay_feeds_the_bot_s_own_webhook_and_maps_another_bot_s_tape_only_when_told(
    redis: aioredis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    webhook: tuple[str, list[tuple[str, str]]],
) -> None:
    await seed(redis)
    base, seen = webhook
    tape = str(alpha_tape(tmp_path / "alpha.jsonl"))

    async def replay(*args: str) -> int:
        return await cli("replay", tape, "--fast", *args)

    assert await replay("--to", base, "--bot", "alpha") == 0
    assert seen == [(f"/webhook/{ALPHA.path_key}", ALPHA.webhook_secret)]
    capsys.readouterr()

    assert await replay("--to", base, "--bot", "bravo") == 2
    line = only_line(capsys.readouterr().err)
    assert "tape of bot alpha (201), not of bravo (202)" in line, line
    assert "--bot alpha=bravo" in line, line
    assert await replay("--to", base, "--bot", "bravo=alpha") == 2
    assert "the tape is of bot alpha (201)" in only_line(capsys.readouterr().err)
    other = f"{base}/webhook/{ALPHA.path_key}"
    assert await replay("--to", other, "--bot", "alpha=bravo") == 2
    assert "another webhook than the --bot's" in only_line(capsys.readouterr().err)
    assert len(seen) == 1  # nothing sent by a refused replay

    assert await replay("--to", base, "--bot", "201=bravo") == 0
    assert seen[1] == (f"/webhook/{BRAVO.path_key}", BRAVO.webhook_secret)
    assert "as bot bravo (202)" in capsys.readouterr().out

    before = {s: await redis.xlen(s) for s in KEYS.all_updates()}
    assert await replay("--into-stream", "--bot", "alpha=bravo") == 0
    added: list[dict[str, Any]] = []
    for stream in KEYS.all_updates():
        rows: Any = await redis.xrange(stream)
        added += [decode_fields(f) for _, f in rows[before[stream] :]]
    assert [(a["bot_id"], a["chat_id"], a["source"]) for a in added] == [
        (str(BRAVO.bot_id), str(CHATS[ALPHA.bot_id]), "replay")
    ]


def test_diff_compares_two_bots_tapes_only_when_mapped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A production bot's tape against a staging bot's: refused with the hint, compared
    with ``--bot BASE=RUN``, refused when the mapping names another bot."""
    base = alpha_tape(tmp_path / "base.jsonl")
    tape = read_tape(base)
    run = tmp_path / "run.jsonl"
    write_tape(run, Header(BRAVO.bot_id, bot_name="bravo"), tape.events)
    assert main(["diff", str(base), str(run)]) == 2
    line = only_line(capsys.readouterr().err)
    assert "tapes of two bots" in line and "--bot alpha=bravo" in line, line
    assert main(["diff", str(base), str(run), "--bot", "alpha=bravo"]) == 0
    assert main(["diff", str(base), str(run), "--bot", "201=202"]) == 0
    capsys.readouterr()
    assert main(["diff", str(base), str(run), "--bot", "alpha=charlie"]) == 2
    assert "run is a tape of bot bravo (202)" in only_line(capsys.readouterr().err)
    assert main(["diff", str(base), str(run), "--bot", "alpha"]) == 2
    assert "give BASE_BOT=RUN_BOT" in only_line(capsys.readouterr().err)
