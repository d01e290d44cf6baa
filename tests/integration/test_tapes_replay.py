"""The round trip: a conversation -> record -> replay --capture into a fresh deployment ->
diff exits 0 (issue 12). Through the updates stream and through the real webhook."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.app.cli import main
from gateway.runtime.streams import connect
from gateway.testkit.emulator import Emulator
from gateway.testkit.tapes.record import Selection
from gateway.testkit.tapes.remap import in_test_range
from gateway.testkit.tapes.replay import ReplayRequest, Timing, replay
from gateway.testkit.tapes.tape import Tape, read_tape
from tests.helpers import BOT_ID, all_roles, make_config, running
from tests.integration.test_tapes_record import SCRIPT, converse, record_to

pytestmark = pytest.mark.integration

SECRET = "replay-secret-0123"


def per_chat(tape: Tape) -> dict[object, list[int]]:
    out: dict[object, list[int]] = {}
    for u in tape.of_type("update"):
        out.setdefault(u["chat_id"], []).append(u["update_id"])
    return out


@pytest.mark.parametrize("target", ["stream", "webhook"])
async def test_round_trip(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    tmp_path: Path,
    target: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Replayed into a fresh deployment, a recorded conversation gets the same answers;
    the capture is in the tape's ids, and a second replay is not swallowed by dedupe."""
    cfg = make_config(redis_url, emu.api_url)
    async with running(*all_roles(cfg)):
        await converse(emu, redis, cfg)
    base = await record_to(tmp_path / "base.jsonl", redis, cfg)
    await redis.flushall()
    emu.reset()

    port = cfg.ingress.ingress_port
    fresh = make_config(
        redis_url,
        emu.api_url,
        telegram={"telegram_mode": "webhook", "telegram_webhook_secret": SECRET,
                  "telegram_webhook_url": f"http://127.0.0.1:{port}/webhook/telegram"},
        ingress={"ingress_port": port},
    )  # fmt: skip
    to = f"http://127.0.0.1:{port}/webhook/telegram" if target == "webhook" else None
    async with running(*all_roles(fresh)):
        for n in (1, 2):
            run = tmp_path / f"run{n}.jsonl"
            req = ReplayRequest(base, Timing(speed=50.0, max_gap=0.2), Selection(), to=to,
                                secret=SECRET, capture=str(run), capture_timeout=30)  # fmt: skip
            code = await replay(req, bot_id=BOT_ID, connect=lambda: connect(redis_url),
                                keys=fresh.keys, dedupe_ttl=600)  # fmt: skip
            assert code == 0
            assert per_chat(read_tape(run)) == per_chat(base)  # the tape's ids, each chat in order
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "base.jsonl"), str(tmp_path / "run2.jsonl")]) == 0, (
        capsys.readouterr().out
    )
    assert f"same answers: {len(SCRIPT) + 1} inbound" in capsys.readouterr().out


@pytest.mark.parametrize("remap", [True, False])
async def test_a_pseudonymised_replay_is_answered_in_the_emulator(
    redis: aioredis.Redis,
    redis_url: str,
    emu: Emulator,
    tmp_path: Path,
    remap: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The replay registers its chats with the emulator (found at --bot-api), so the
    replies are delivered, not dead-lettered; with --remap-ids they go to the test-range
    chats, and the capture is in the tape's ids: diff exits 0."""
    cfg = make_config(redis_url, emu.api_url)
    async with running(*all_roles(cfg)):
        await converse(emu, redis, cfg)
    base = await record_to(tmp_path / "base.jsonl", redis, cfg)
    await redis.flushall()
    emu.reset()
    run = tmp_path / "run.jsonl"
    async with running(*all_roles(cfg)):
        req = ReplayRequest(base, Timing(fast=True), Selection(), capture=str(run),
                            capture_timeout=30, remap_ids=remap, bot_api=emu.api_url)  # fmt: skip
        code = await replay(req, bot_id=BOT_ID, connect=lambda: connect(redis_url),
                            keys=cfg.keys, dedupe_ttl=600)  # fmt: skip
    assert code == 0
    out = capsys.readouterr()
    assert "registered 2 chat(s) with the emulator" in out.out
    assert "replay: 4/4 updates (100%)" in out.err  # the progress line, off a terminal
    tape_chats = list(per_chat(base))
    sent_to = [9_900_000_001, 9_900_000_002] if remap else tape_chats
    for chat, n in zip(sent_to, (len(SCRIPT), 1), strict=True):
        assert len(emu.messages(chat)) >= n, chat  # delivered where the replay sent it
    if remap:
        assert all(in_test_range(c) for c in sent_to)
        assert not any(emu.messages(c) for c in tape_chats)
    captured = read_tape(run)
    assert per_chat(captured) == per_chat(base)
    assert {e["chat_id"] for e in captured.events} <= {*tape_chats, *map(str, tape_chats)}
    results = captured.of_type("result")
    assert results and all(r["ok"] and r["message_ids"] for r in results)
    assert main(["diff", str(tmp_path / "base.jsonl"), str(run)]) == 0, capsys.readouterr().out
