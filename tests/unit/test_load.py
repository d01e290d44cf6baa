"""``tg-gateway load``'s pure parts: the mix, the synthetic plan, the latency's shares, and
the command's refusals (issue 12)."""

from __future__ import annotations

import pytest

from gateway.app.cli import main
from gateway.testkit.load.measure import Calls, Inbound, decompose, percentile, pipeline_times
from gateway.testkit.load.synth import CHAT_BASE, parse_mix, synthesize


def test_the_mix_is_normalised_and_bad_mixes_are_refused() -> None:
    """Shares sum to 1; an unknown kind, a repeated one or all zeros is a ValueError."""
    assert parse_mix("text=8,command=1,callback=1") == {
        "text": 0.8,
        "command": 0.1,
        "callback": 0.1,
    }
    assert parse_mix("text=1") == {"text": 1.0}
    for bad in ("photo=1", "text=1,text=2", "text=0", "text", "text=-1", ""):
        with pytest.raises(ValueError, match="not a mix"):
            parse_mix(bad)


def test_the_plan_holds_the_rate_and_turns_through_the_chats() -> None:
    """rate x duration updates, 1/rate apart, chats in turn, fresh ids, the mix's kinds."""
    plan = synthesize(4, 20, 2, parse_mix("text=0.5,callback=0.5"), first_id=1000)
    assert len(plan) == 40
    assert [s.step.offset for s in plan[:3]] == [0, 0.05, 0.1]
    assert [s.chat_id - CHAT_BASE for s in plan[:5]] == [0, 1, 2, 3, 0]
    assert [s.update_id for s in plan] == list(range(1000, 1040))
    assert {s.kind for s in plan} == {"text", "callback"}
    for s in plan:
        update = s.step.event["update"]
        if s.kind == "callback":
            assert update["callback_query"]["id"] == s.query_id
        else:
            assert update["message"]["chat"]["id"] == s.chat_id and s.query_id is None
    assert synthesize(4, 20, 2, parse_mix("text=0.5,callback=0.5"), 1000) == plan  # seeded


def _result(uid: int, chat: int, method: str, mids: str, at: float, send_ms: float,
            queue_ms: float) -> dict[str, str]:  # fmt: skip
    return {"update_id": str(uid), "chat_id": str(chat), "method": method, "ok": "1",
            "message_ids": mids, "at": f"{at:.6f}", "send_latency_ms": str(send_ms),
            "queue_latency_ms": str(queue_ms)}  # fmt: skip


def test_the_shares_split_the_total_without_overlap() -> None:
    """Total = Bot API call - webhook POST; the pipeline's time and the sender's wait
    (before the call, and behind the chat's previous reply) come off it; own is the rest."""
    sent = {1: Inbound(100.0, 7, "text"), 2: Inbound(100.1, 7, "callback", "q2")}
    results = [
        # update 1: enqueued 100.050, taken 100.051, called 100.301 (a 250 ms limiter wait)
        _result(1, 7, "sendMessage", "[11]", 100.302, 251.0, 1.0),
        # update 2's callback answer, enqueued 100.110 but its chat busy until 100.302
        _result(2, 7, "answerCallbackQuery", "[]", 100.305, 2.0, 193.0),
        _result(2, 7, "sendChatAction", "[]", 100.2, 1.0, 1.0),  # typing: not an answer
    ]
    calls = Calls.of([{"chat_id": 7, "message": {"message_id": 11}, "ts": 100.301}],
                     [{"callback_query_id": "q2", "ts": 100.304}])  # fmt: skip
    pipe = pipeline_times([{"idempotency_key": "tg-5-1", "received_at": 100.01,
                            "answered_at": 100.04}])  # fmt: skip
    replies, unmatched = decompose(sent, results, calls, pipe)
    assert unmatched == 0 and [r.method for r in replies] == ["sendMessage", "answerCallbackQuery"]
    first, second = replies
    assert first.total == pytest.approx(0.301) and first.pipeline == pytest.approx(0.03)
    assert first.limiter == pytest.approx(0.25) and first.own == pytest.approx(0.021)
    assert second.pipeline == 0  # the gateway answers a button itself
    # waited 100.110 -> 100.302 behind the first reply, then 1 ms before its call
    assert second.limiter == pytest.approx(0.192 + 0.001)
    assert second.own == pytest.approx(0.204 - 0.193)


def test_a_result_without_its_call_is_counted_not_measured() -> None:
    sent = {1: Inbound(100.0, 7, "text")}
    results = [_result(1, 7, "sendMessage", "[99]", 100.3, 1.0, 1.0)]
    assert decompose(sent, results, Calls({}, {}), {}) == ([], 1)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([3.0], 99) == 3.0


LOAD = ["load", "--to", "http://127.0.0.1:9/webhook/telegram", "--chats", "2", "--rate", "5",
        "--duration", "1"]  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [
        [],  # TELEGRAM_API_URL's default: api.telegram.org
        ["--bot-api", "https://api.telegram.org"],
        ["--bot-api", "https://API.telegram.org/"],
    ],
)
def test_load_refuses_the_real_bot_api(
    extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The measure is the emulator's call log: a real Bot API is refused, exit 2."""
    assert main([*LOAD, *extra]) == 2
    assert "api.telegram.org" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--chats", "0"],
        ["--rate", "-1"],
        ["--duration", "nan"],
        ["--mix", "photo=1"],
        ["--to", "ftp://x"],
        ["--rate", "100000", "--duration", "100"],  # past the plan's bound
    ],
)
def test_load_bad_arguments_exit_2(args: list[str]) -> None:
    """argparse's refusals exit 2, as do the command's own (a UsageError)."""
    argv = [*LOAD, "--bot-api", "http://127.0.0.1:9", *args]
    try:
        code = main(argv)
    except SystemExit as exited:
        code = int(exited.code or 0)
    assert code == 2


def test_load_needs_its_target_and_shape() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["load", "--chats", "2"])
    assert exited.value.code == 2
