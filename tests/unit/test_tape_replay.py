"""Replay planning, lanes and the guards: pure, or the CLI with nothing to reach."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.app.cli import main
from gateway.core.errors import UsageError
from gateway.testkit.tapes.replay import Step, Timing, deliver, guard_bot_api, parse_speed, plan
from gateway.testkit.tapes.tape import Header, Tape, write_tape

BOT = 7689012345


def update(uid: int, chat: int, at: float) -> dict[str, Any]:
    body = {"update_id": uid, "message": {"chat": {"id": chat}, "text": "x"}}
    return {"type": "update", "at": at, "update_id": uid, "chat_id": chat, "update": body}


TAPE = Tape(
    Header(bot_id=BOT),
    [update(1, 10, 100.0), update(2, 20, 100.5), update(3, 10, 102.0), update(4, 20, 110.0)],
)
SPAN = 10.0


def test_speed_forms() -> None:
    assert parse_speed("10x") == 10 and parse_speed("200%") == 2 and parse_speed("0.5") == 0.5
    for bad in ("fast", "0x", "-2", "10y"):
        with pytest.raises(ValueError, match="not a speed"):
            parse_speed(bad)


@pytest.mark.parametrize("speed", [1.0, 2.0, 10.0, 0.5])
def test_speed_is_a_ratio_of_the_tapes_span(speed: float) -> None:
    """The plan's span is the tape's span over the speed; the gaps keep their proportions."""
    steps = plan(TAPE, Timing(speed=speed), first_id=1000)
    assert steps[-1].offset == pytest.approx(SPAN / speed)
    assert [s.offset * speed for s in steps] == pytest.approx([0, 0.5, 2.0, 10.0])


def test_gap_cap_rate_fast_and_loops() -> None:
    assert [s.offset for s in plan(TAPE, Timing(max_gap=1.0), first_id=1)] == [0, 0.5, 1.5, 2.5]
    assert [s.offset for s in plan(TAPE, Timing(rate=4), first_id=1)] == [0, 0.25, 0.5, 0.75]
    assert {s.offset for s in plan(TAPE, Timing(fast=True), first_id=1)} == {0}
    looped = plan(TAPE, Timing(max_gap=1.0, loops=3), first_id=1)
    assert len(looped) == 12 and [s.loop for s in looped[::4]] == [0, 1, 2]
    assert [s.offset for s in looped] == sorted(s.offset for s in looped)


def test_fresh_ids_are_unique_and_mapped() -> None:
    """Every step has its own new update id, in the body too; the tape's id stays known."""
    steps = plan(TAPE, Timing(loops=2), first_id=5000)
    assert [s.update_id for s in steps] == list(range(5000, 5008))
    assert [s.event["update_id"] for s in steps] == [1, 2, 3, 4] * 2
    assert b'"update_id":5002' in steps[2].body()


async def test_one_in_flight_per_chat_chats_concurrently() -> None:
    """A chat's next update waits for its previous one; other chats do not wait."""
    in_flight: dict[Any, int] = {}
    peak_chat, peak_all, order = 0, 0, []

    async def send(step: Step) -> None:
        nonlocal peak_chat, peak_all
        in_flight[step.chat_id] = in_flight.get(step.chat_id, 0) + 1
        peak_chat = max(peak_chat, in_flight[step.chat_id])
        peak_all = max(peak_all, sum(in_flight.values()))
        await asyncio.sleep(0.05)
        order.append(step.event["update_id"])
        in_flight[step.chat_id] -= 1

    await deliver(plan(TAPE, Timing(fast=True), first_id=1), send)
    assert peak_chat == 1 and peak_all == 2
    assert [u for u in order if u in (1, 3)] == [1, 3] and [u for u in order if u in (2, 4)] == [
        2,
        4,
    ]


def test_real_bot_api_guard() -> None:
    with pytest.raises(UsageError, match="would message real people"):
        guard_bot_api("https://api.telegram.org", allowed=False)
    with pytest.raises(UsageError):
        guard_bot_api("https://API.Telegram.org:443/", allowed=False)
    guard_bot_api("https://api.telegram.org", allowed=True)
    guard_bot_api("http://127.0.0.1:8081", allowed=False)


@pytest.fixture
def tape_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.jsonl"
    write_tape(path, TAPE.header, TAPE.events)
    return path


def test_dry_run_prints_the_plan_and_sends_nothing(
    tape_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Redis or webhook is reachable (REDIS_URL points nowhere): the plan still prints."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["replay", str(tape_file), "--dry-run", "--speed", "200%"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 update(s) over 5.00s") and "update 4 ->" in out


def test_the_guard_holds_before_anything_is_sent(
    tape_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TELEGRAM_API_URL unset means the real Bot API: refused, exit 2, Redis never asked
    (it would be exit 3: nothing listens on REDIS_URL)."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["replay", str(tape_file), "--into-stream"]) == 2
    assert "would message real people" in capsys.readouterr().err
    code = main(["replay", str(tape_file), "--into-stream", "--bot-api", "http://127.0.0.1:9"])
    assert code == 3  # past the guard, Redis is needed and not there


def test_bad_or_foreign_tape_exit_2(
    tape_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(tape_file.read_text()[:-5])
    assert main(["replay", str(bad), "--dry-run"]) == 2
    assert "truncated" in capsys.readouterr().err
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "42:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert main(["replay", str(tape_file), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "not of this bot (42)" in err and "AAAA" not in err
    assert main(["diff", str(tape_file), str(bad)]) == 2
