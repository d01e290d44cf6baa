"""``tg-gateway record --follow`` as an operator runs it: Ctrl-C flushes, exits 0."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.core.contracts import Keys, OutboundEntry, partition_for, result_fields, update_fields
from gateway.testkit.tapes.record import RECORDER_GROUP
from gateway.testkit.tapes.tape import read_tape
from tests.helpers import BOT_ID, TOKEN, env_without_gateway_vars, wait_for

pytestmark = pytest.mark.e2e

KEYS = Keys("tg", 4)
CHAT = 6123456789


async def _group_ready(redis: aioredis.Redis) -> bool:
    try:
        groups: Any = await redis.xinfo_groups(KEYS.results)
    except aioredis.ResponseError:
        return False
    return any(g["name"] in (RECORDER_GROUP, RECORDER_GROUP.encode()) for g in groups)


async def test_ctrl_c_ends_a_followed_recording_with_exit_0(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "live.jsonl.gz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "record", "--follow", "--out", str(out)],
        env={**env_without_gateway_vars(), "REDIS_URL": redis_url, "TELEGRAM_BOT_TOKEN": TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await wait_for(lambda: _group_ready(redis), timeout=30, message="recorder group")
        p = partition_for(CHAT, KEYS.partitions, BOT_ID)
        update = {"update_id": 7, "message": {"message_id": 1, "date": 1, "text": "hi",
                                              "chat": {"id": CHAT, "type": "private"}}}  # fmt: skip
        await redis.xadd(KEYS.updates(p), update_fields(bot_id=BOT_ID, update_id=7, chat_id=CHAT,
                         source="webhook", raw_update=orjson.dumps(update)))  # fmt: skip
        entry = OutboundEntry(bot_id=BOT_ID, chat_id=CHAT, payload={"text": "hello"}, update_id=7)
        await redis.xadd(KEYS.outbound(p), entry.to_fields())  # type: ignore[arg-type]
        await redis.xadd(KEYS.results, result_fields(reply_id=entry.reply_id, chat_id=CHAT,
                         method="sendMessage", ok=True, message_ids=[2], attempts=1,
                         queue_latency_ms=1, send_latency_ms=2, update_id=7))  # fmt: skip
        await wait_for(lambda: not _exited(proc) and _read_all(redis), timeout=15)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "recorded 3 event(s)" in err
    tape = read_tape(out, bot_id=BOT_ID)
    assert [e["type"] for e in tape.events] == ["update", "send", "result"]
    assert str(CHAT) not in gzip.decompress(out.read_bytes()).decode()  # ids are pseudonyms
    assert not await _group_ready(redis)


def _exited(proc: subprocess.Popen[str]) -> bool:
    return proc.poll() is not None


async def _read_all(redis: aioredis.Redis) -> bool:
    """The recorder has read (and acked) all three entries: nothing left for its group."""
    info: Any = await redis.xinfo_groups(KEYS.results)
    ours = next(g for g in info if g["name"] in (RECORDER_GROUP, RECORDER_GROUP.encode()))
    return int(ours["pending"]) == 0 and ours["last-delivered-id"] not in (b"0-0", "0-0")


async def test_record_a_window_then_diff_exits_0_then_1(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The batch path through the real CLI: two recordings (two generated keys, so other
    pseudonyms) diff as the same; a tape with a changed reply makes diff exit 1."""
    p = partition_for(CHAT, KEYS.partitions, BOT_ID)
    update = {"update_id": 9, "message": {"message_id": 1, "date": 1, "text": "hi",
                                          "chat": {"id": CHAT, "type": "private"}}}  # fmt: skip
    await redis.xadd(KEYS.updates(p), update_fields(bot_id=BOT_ID, update_id=9, chat_id=CHAT,
                     source="webhook", raw_update=orjson.dumps(update)))  # fmt: skip
    entry = OutboundEntry(bot_id=BOT_ID, chat_id=CHAT, payload={"text": "hello"}, update_id=9)
    await redis.xadd(KEYS.outbound(p), entry.to_fields())  # type: ignore[arg-type]
    env = {**env_without_gateway_vars(), "REDIS_URL": redis_url, "TELEGRAM_BOT_TOKEN": TOKEN}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], env=env, text=True,
                              capture_output=True, timeout=60, check=False)  # fmt: skip

    for name in ("a.jsonl", "b.jsonl"):
        done = cli("record", "--out", str(tmp_path / name), "--since", "1h")
        assert done.returncode == 0 and "recorded 2 event(s)" in done.stderr, done.stderr
    same = cli("diff", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"))
    assert same.returncode == 0, same.stdout
    changed = (tmp_path / "b.jsonl").read_text().replace('"text":"hello"', '"text":"bye"')
    (tmp_path / "c.jsonl").write_text(changed)
    differ = cli("diff", str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl"))
    assert differ.returncode == 1 and "text 'hello' -> 'bye'" in differ.stdout
    bad = cli("diff", str(tmp_path / "a.jsonl"), str(tmp_path / "absent.jsonl"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such tape" in bad.stderr
