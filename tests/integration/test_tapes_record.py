"""``record`` on real streams written by the real ingress, worker and sender (issue 12)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

import gateway.testkit.reference.rules
from gateway.app.cli import main
from gateway.testkit.emulator import Emulator
from gateway.testkit.reference.rules import reply_body
from gateway.testkit.tapes.record import RECORDER_GROUP, RecordRequest, Selection, record
from gateway.testkit.tapes.tape import Tape, read_tape
from tests.helpers import BOT_ID, all_roles, make_config, results, running, wait_for

pytestmark = pytest.mark.integration

ALICE = 6123456789
BOB = 5987654321
KEY = SecretStr("a-fixed-test-key")
SCRIPT = ["/start", "How do I reset my password?", "thanks, bye"]


async def converse(emu: Emulator, redis: aioredis.Redis, cfg: Any) -> None:
    """Alice sends the script one message at a time; Bob says hello once."""
    for n, text in enumerate(SCRIPT, 1):
        emu.user_send(user_id=ALICE, text=text, last_name="Liddell")
        await emu.wait_messages(ALICE, n, timeout=15)
    emu.user_send(user_id=BOB, text="hello", first_name="Bob", username="bobby")
    await emu.wait_messages(BOB, 1, timeout=15)
    await wait_for(lambda: _count(redis, cfg, len(SCRIPT) + 1), message="all results")


async def _count(redis: aioredis.Redis, cfg: Any, n: int) -> bool:
    return len(await results(redis, cfg)) >= n


async def record_to(path: Path, redis: aioredis.Redis, cfg: Any, **sel: Any) -> Tape:
    req = RecordRequest(str(path), Selection(**sel))
    await record(redis, cfg.keys, req, bot_id=BOT_ID, bot_username="b", key=KEY)
    return read_tape(path, bot_id=BOT_ID)


async def test_record_a_conversation(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, tmp_path: Path
) -> None:
    """Every update, send and result, in time order, each send and result naming its
    update; nothing of Alice's identity on the tape, her words kept."""
    cfg = make_config(redis_url, emu.api_url)
    async with running(*all_roles(cfg)):
        await converse(emu, redis, cfg)
    tape = await record_to(tmp_path / "t.jsonl.gz", redis, cfg)
    updates = tape.of_type("update")
    assert [u["update"]["message"].get("text") for u in updates] == [*SCRIPT, "hello"]
    assert [e["at"] for e in tape.events] == sorted(e["at"] for e in tape.events)
    update_ids = {u["update_id"] for u in updates}
    sends, done = tape.of_type("send"), tape.of_type("result")
    assert len(sends) >= 4 and {s["update_id"] for s in sends} == update_ids
    assert {r["reply_id"] for r in done} == {s["reply_id"] for s in sends}
    assert all(r["ok"] and r["message_ids"] for r in done)
    raw = (tmp_path / "t.jsonl.gz").read_bytes()
    import gzip

    text = gzip.decompress(raw).decode()
    for secret in (str(ALICE), str(BOB), "Alice", "alice", "Liddell", "Bob", "bobby"):
        assert secret not in text, secret
    assert tape.header.redaction["pseudonymise_ids"] is True
    assert len({u["chat_id"] for u in updates}) == 2


async def test_filters_and_no_redact(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, tmp_path: Path
) -> None:
    """--chat keeps one chat and its answers; --no-redact keeps the ids, says so; with no
    TELEGRAM_BOT_TOKEN the header names the bot of the entries."""
    cfg = make_config(redis_url, emu.api_url)
    async with running(*all_roles(cfg)):
        await converse(emu, redis, cfg)
    path = tmp_path / "bob.jsonl"
    req = RecordRequest(str(path), Selection(chats=frozenset({BOB})), redact=False)
    await record(redis, cfg.keys, req, bot_id=0, bot_username=None, key=None)
    tape = read_tape(path, bot_id=BOT_ID)  # no token where it ran: the entries' bot
    assert {e["chat_id"] for e in tape.events} == {BOB} or {
        str(e["chat_id"]) for e in tape.events
    } == {str(BOB)}
    assert len(tape.of_type("update")) == 1 and tape.of_type("send")
    assert tape.header.redaction == {"enabled": False}


async def test_a_changed_reply_is_named_by_diff(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two deployments' recordings of one conversation: diff exits 0; with one canned reply
    of the reference pipeline changed, it exits 1 and names that message."""
    cfg = make_config(redis_url, emu.api_url)
    tapes = []
    for run in ("base", "same", "changed"):
        await redis.flushall()
        emu.reset()
        if run == "changed":

            def changed(client_id: str, content: str) -> dict[str, Any]:
                body = reply_body(client_id, content)
                if "password" in content:
                    body["content"] = "Please call support."
                return body

            # gateway.app.roles.make_pipeline imports it when it builds the embedded pipeline
            monkeypatch.setattr(gateway.testkit.reference.rules, "reply_body", changed)
        async with running(*all_roles(cfg)):
            await converse(emu, redis, cfg)
        await record_to(tmp_path / f"{run}.jsonl", redis, cfg)
        tapes.append(str(tmp_path / f"{run}.jsonl"))
    capsys.readouterr()
    assert main(["diff", tapes[0], tapes[1]]) == 0
    assert capsys.readouterr().out.startswith("same answers: 4 inbound message(s)")
    assert main(["diff", tapes[0], tapes[2]]) == 1
    out = capsys.readouterr().out
    assert "1 difference(s)" in out
    assert "message 2 (update" in out and "'How do I reset my password?'" in out
    assert "-> 'Please call support.'" in out


async def test_follow_records_live_and_stops_cleanly(
    redis: aioredis.Redis, redis_url: str, emu: Emulator, tmp_path: Path
) -> None:
    """--follow reads through its own group (present while it runs), writes each batch as
    it comes, and on stop leaves a complete tape and no group behind."""
    cfg = make_config(redis_url, emu.api_url)
    path = tmp_path / "live.jsonl"
    stop = asyncio.Event()
    req = RecordRequest(str(path), Selection(), follow=True)
    async with running(*all_roles(cfg)):
        task = asyncio.create_task(
            record(redis, cfg.keys, req, bot_id=BOT_ID, bot_username=None, key=KEY, stop=stop)
        )
        await wait_for(lambda: _has_group(redis, cfg.keys.results), message="recorder group")
        await converse(emu, redis, cfg)
        await wait_for(lambda: path.read_text().count('"type":"result"') >= 4, message="live")
        stop.set()
        count, cut = await asyncio.wait_for(task, 10)
    tape = read_tape(path)
    assert count == len(tape.events) and not cut
    assert len(tape.of_type("update")) == 4
    assert not await _has_group(redis, cfg.keys.updates(0))
    assert tape.header.time_range[1] is None  # a followed tape ends with its last event


async def _has_group(redis: aioredis.Redis, stream: str) -> bool:
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except aioredis.ResponseError:
        return False
    return any(g["name"] in (RECORDER_GROUP, RECORDER_GROUP.encode()) for g in groups)


def test_bad_time_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["record", "--out", str(tmp_path / "t"), "--since", "yesterday"]) == 2
    assert "--since: not a time: 'yesterday'" in capsys.readouterr().err
