"""Pure parts of the Telegram emulator: windows, stats, queue, text rules, update shapes, faults."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.testkit.emulator.errors import WEBHOOK_ACTIVE
from gateway.testkit.emulator.faults import Faults
from gateway.testkit.emulator.limits import (
    EmulatorLimits,
    SendWindows,
    max_in_window,
    window_maxima,
)
from gateway.testkit.emulator.objects import user_obj
from gateway.testkit.emulator.state import EmulatorState, time_based_update_id
from gateway.testkit.emulator.text import (
    EntityParseError,
    detect_entities,
    parse_html,
    parse_markdown,
    parse_markdown_v2,
    utf16_len,
)
from gateway.testkit.emulator.users import push_update, user_edit, user_press, user_send
from tests.helpers import FIXTURES

BOT = user_obj(7689012345, "Example Gateway", username="example_gateway_bot", is_bot=True)


def fixture(name: str) -> Any:
    path = FIXTURES / name
    return json.loads(path.read_text())


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_state(limits: EmulatorLimits | None = None) -> tuple[EmulatorState, FakeClock]:
    clock = FakeClock()
    return EmulatorState(BOT, limits, clock=clock, wall=lambda: 1735993207.0), clock


def send(state: EmulatorState, chat_id: int) -> bool:
    """One send attempt as the Bot API does it: check the windows, then record."""
    if state.send_wait(chat_id) is not None:
        return False
    message = {"message_id": 1, "from": BOT, "chat": {"id": chat_id}, "date": 0, "text": "x"}
    state.record_send("sendMessage", message)
    return True


# --- sliding windows -------------------------------------------------------------------------


def test_global_window_admits_exactly_the_limit_then_frees_after_one_second() -> None:
    windows = SendWindows(EmulatorLimits(global_per_second=30, chat_per_second=1))
    results = []
    for chat in range(1, 41):
        wait = windows.retry_after(chat, 10.0)
        results.append(wait)
        if wait is None:
            windows.record(chat, 10.0)
    assert results[:30] == [None] * 30
    assert results[30:] == [1] * 10
    assert windows.retry_after(99, 10.999) == 1
    assert windows.retry_after(99, 11.0) is None  # the window is (now - 1 s, now]


def test_paid_broadcasts_get_the_higher_global_limit() -> None:
    windows = SendWindows(EmulatorLimits(global_per_second=30, paid_per_second=100))
    for chat in range(1, 31):
        windows.record(chat, 5.0)
    assert windows.retry_after(31, 5.0) == 1  # the 31st unpaid send in a second: 429
    for chat in range(31, 101):
        assert windows.retry_after(chat, 5.0, paid=True) is None
        windows.record(chat, 5.0)
    assert windows.retry_after(101, 5.0, paid=True) == 1  # paid sends have a limit too


def test_chat_window_and_retry_after_rounds_up() -> None:
    windows = SendWindows(EmulatorLimits(chat_per_second=1))
    windows.record(5, 0.0)
    assert windows.retry_after(5, 0.2) == 1
    assert windows.retry_after(6, 0.2) is None
    assert windows.retry_after(5, 1.0) is None


def test_group_window_counts_sixty_seconds_and_reports_seconds_until_free() -> None:
    windows = SendWindows(EmulatorLimits(group_per_minute=20))
    chat = -1002143658709
    for i in range(20):
        assert windows.retry_after(chat, i * 1.5) is None
        windows.record(chat, i * 1.5)
    assert windows.retry_after(chat, 30.0) == 30  # the first send (t=0) leaves at t=60
    assert windows.retry_after(chat, 59.5) == 1
    assert windows.retry_after(chat, 60.0) is None
    assert windows.retry_after(4242, 30.0) is None  # private chats have no minute window


def test_no_limits_never_rejects() -> None:
    windows = SendWindows(None)
    for _ in range(100):
        windows.record(1, 0.0)
        assert windows.retry_after(1, 0.0) is None


def test_max_in_window_is_sliding_not_bucketed() -> None:
    # Fixed 1 s buckets would see 3 and 2; the trailing window ending at 1.2 holds all 5.
    assert max_in_window([0.6, 0.7, 0.8, 1.1, 1.2], 1.0) == 5
    assert max_in_window([0.0, 1.0, 2.0], 1.0) == 1  # (t-1, t] excludes the left edge
    assert max_in_window([], 1.0) == 0


def test_window_maxima_per_kind() -> None:
    sends = [(1, 0.0), (1, 0.5), (2, 0.6), (-5, 0.7), (-5, 30.0), (-5, 59.9), (-5, 61.0)]
    peaks = window_maxima(sends)
    assert peaks.global_1s == 4
    assert peaks.chat_1s == {1: 2, 2: 1, -5: 1}
    assert peaks.group_60s == {-5: 3}


def test_state_stats_from_injected_clock() -> None:
    state, clock = make_state(EmulatorLimits(global_per_second=3, chat_per_second=2))
    assert [send(state, 1), send(state, 1), send(state, 1)] == [True, True, False]
    assert send(state, 2)
    assert not send(state, 3)  # global: 3 in the window
    clock.now += 0.5
    assert not send(state, 3)
    clock.now += 0.5
    assert send(state, 3)
    stats = state.stats()
    assert stats["sent"] == 4
    assert stats["rejected_429"] == 3
    assert stats["max_global_1s"] == 3
    assert stats["max_chat_1s"] == {1: 2, 2: 1, 3: 1}
    assert stats["max_group_60s"] == {}
    assert state.logs.sent[-1]["ts"] == pytest.approx(1735993207.0 + 1.0)


# --- update queue ----------------------------------------------------------------------------


def test_queue_ids_offset_and_allowed_updates() -> None:
    state, _ = make_state()
    first = user_send(state, 111, "one")
    second = user_send(state, 111, "two")
    one = first["update_id"]
    assert second["update_id"] == one + 1
    raw = push_update(state, {"update_id": one + 500, "poll": {"id": "1"}})
    assert raw["update_id"] == one + 500
    assert user_send(state, 111, "three")["update_id"] == one + 501
    assert [u["update_id"] for u in state.fetch(2, [])] == [one, one + 1]
    state.confirm(second["update_id"])
    assert [u["update_id"] for u in state.fetch(100, ["message"])] == [one + 1, one + 501]
    assert one + 500 not in state.queue  # filtered out for good, like Telegram never creating it
    state.confirm(-1)
    assert list(state.queue) == [one + 501]


def test_pending_updates_per_chat_head() -> None:
    state, _ = make_state()
    a1 = user_send(state, 1, "a1")
    b1 = user_send(state, 2, "b1")
    a2 = user_send(state, 1, "a2")
    assert state.head("c1", [])["update_id"] == a1["update_id"]  # type: ignore[index]
    state.remove_update(a1["update_id"])
    assert state.head("c1", [])["update_id"] == a2["update_id"]  # type: ignore[index]
    assert state.head("c2", [])["update_id"] == b1["update_id"]  # type: ignore[index]
    state.remove_update(a2["update_id"])
    assert state.head("c1", []) is None


def test_webhook_info_omits_empty_fields() -> None:
    state, _ = make_state()
    user_send(state, 1, "x")
    assert state.webhook_info() == {
        "url": "",
        "has_custom_certificate": False,
        "pending_update_count": 1,
    }
    state.set_webhook("http://127.0.0.1:1/hook", None, 40, None)
    state.webhook_error("Wrong response from the webhook: 502 Bad Gateway")
    info = state.webhook_info()
    assert info["url"] == "http://127.0.0.1:1/hook"
    assert info["last_error_message"] == "Wrong response from the webhook: 502 Bad Gateway"
    assert info["last_error_date"] == 1735993207
    assert info["max_connections"] == 40
    assert "allowed_updates" not in info
    assert "webhook" in WEBHOOK_ACTIVE


# --- update shapes match the recorded fixtures -----------------------------------------------


def _shape(value: Any) -> Any:
    """Keys (recursively) with leaf values replaced by their type, to compare structures."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def test_private_message_matches_fixture() -> None:
    expected = fixture("updates/01_private_text_message.json")
    state, _ = make_state()
    update = user_send(
        state, 6123456789, "Hi! Can you check the status of order 4411?", first_name="Alice",
        last_name="Novak", username="alice_novak",
    )  # fmt: skip
    assert _shape(update) == _shape(expected)
    assert update["message"]["chat"] == expected["message"]["chat"]
    assert update["message"]["from"] == expected["message"]["from"]


def test_supergroup_command_matches_fixture() -> None:
    expected = fixture("updates/05_supergroup_bot_command.json")
    state, _ = make_state()
    update = user_send(
        state, 5987654321, "/status@example_gateway_bot eu-west", chat_id=-1002143658709,
        chat_title="Ops Team", first_name="Bogdan", username="bogdan_ops", language_code="uk",
    )  # fmt: skip
    assert update["message"]["chat"] == expected["message"]["chat"]
    assert update["message"]["entities"] == expected["message"]["entities"]
    assert _shape(update) == _shape(expected)


def test_photo_edit_and_callback_match_fixtures() -> None:
    state, _ = make_state()
    photo = user_send(
        state, 6123456789, None, first_name="Alice", last_name="Novak", username="alice_novak",
        photo_file_id="AgACAgIAAxkBAAIFCGd5", caption="Receipt for order #4411",
    )  # fmt: skip
    expected_photo = fixture("updates/02_private_photo_with_caption.json")
    assert _shape(photo) == _shape(expected_photo)
    assert photo["message"]["caption_entities"] == expected_photo["message"]["caption_entities"]
    assert photo["message"]["photo"][-1]["file_id"] == "AgACAgIAAxkBAAIFCGd5"

    text = user_send(state, 6123456789, "order 4411?", first_name="Alice", last_name="Novak")
    message_id = text["message"]["message_id"]
    edited = user_edit(state, 6123456789, 6123456789, message_id, "order 4412?")
    expected_edit = fixture("updates/04_edited_message.json")
    assert _shape(edited) == _shape(expected_edit)
    assert edited["edited_message"]["message_id"] == message_id

    bot_message = {
        "message_id": 99, "from": BOT, "chat": text["message"]["chat"], "date": 1,
        "text": "Cancel order 4411?",
        "reply_markup": {"inline_keyboard": [[{"text": "Yes", "callback_data": "cancel:yes"}]]},
    }  # fmt: skip
    state.store_message(bot_message)
    press = user_press(state, 6123456789, 6123456789, 99, "cancel:yes")
    expected_press = fixture("updates/03_callback_query.json")
    assert _shape(press) == _shape(expected_press)
    assert press["callback_query"]["id"].isdigit()
    assert press["callback_query"]["message"] == bot_message
    assert press["callback_query"]["id"] in state.callback_queries


def test_user_side_rejects_impossible_chats() -> None:
    state, _ = make_state()
    with pytest.raises(ValueError, match="chat_id is required"):
        user_send(state, 1, "x", chat_type="group")
    with pytest.raises(ValueError, match="private chat"):
        user_send(state, 1, "x", chat_id=2)
    group = user_send(state, 1, "x", chat_id=-42)
    assert group["message"]["chat"]["type"] == "group"
    with pytest.raises(ValueError, match="no message"):
        user_press(state, 1, -42, 999, "data")


# --- text rules ------------------------------------------------------------------------------


def test_utf16_length_counts_surrogate_pairs() -> None:
    assert utf16_len("abc") == 3
    assert utf16_len("😀") == 2
    assert utf16_len("é") == 1


def test_html_is_stripped_unescaped_and_measured() -> None:
    text, entities = parse_html(
        '<b>Hi</b> &lt;you&gt; <a href="https://x.io/?a=1&amp;b=2">😀 l</a>'
    )
    assert text == "Hi <you> 😀 l"
    assert entities == [
        {"offset": 0, "length": 2, "type": "bold"},
        {"offset": 9, "length": 4, "type": "text_link", "url": "https://x.io/?a=1&b=2"},
    ]
    _, pre = parse_html('<pre><code class="language-python">x = 1</code></pre>')
    assert pre == [{"offset": 0, "length": 5, "type": "pre", "language": "python"}]


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("Hello world <b>x", "Can't find end of the entity starting at byte offset 12"),
        ("é <i>x", "Can't find end of the entity starting at byte offset 3"),
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<foo>x</foo>", 'Unsupported start tag "foo" at byte offset 0'),
        ("a < b", 'Unsupported start tag "" at byte offset 2'),
    ],
)
def test_bad_html_fails_with_telegram_wording(source: str, error: str) -> None:
    with pytest.raises(EntityParseError) as caught:
        parse_html(source)
    assert str(caught.value) == error


def test_markdown_flavours() -> None:
    assert parse_markdown("*bold* and _it_")[1] == [
        {"offset": 0, "length": 4, "type": "bold"},
        {"offset": 9, "length": 2, "type": "italic"},
    ]
    expected = fixture("responses/err_400_cant_parse_entities.json")["description"]
    with pytest.raises(EntityParseError) as caught:
        parse_markdown("Hello world *unclosed")
    assert f"Bad Request: can't parse entities: {caught.value}" == expected
    assert parse_markdown_v2(r"*a _b_* 1\.5")[0] == "a b 1.5"
    with pytest.raises(EntityParseError, match=r"Character '\.' is reserved"):
        parse_markdown_v2("1.5")
    with pytest.raises(EntityParseError, match="Can't find end of Bold entity at byte offset 0"):
        parse_markdown_v2("*open")


def test_detected_entities() -> None:
    assert detect_entities("/start") == [{"offset": 0, "length": 6, "type": "bot_command"}]
    assert detect_entities("hi 😀 #tag see https://a.io.") == [
        {"offset": 6, "length": 4, "type": "hashtag"},
        {"offset": 15, "length": 12, "type": "url"},
    ]
    assert detect_entities("plain text") == []


# --- faults ----------------------------------------------------------------------------------


def test_fail_next_is_consumed_per_matching_method() -> None:
    faults = Faults()
    faults.fail_next("sendMessage", 2)
    faults.fail_next(None, 1, status=500, html=False)
    assert faults.take_failure("getMe") is not None  # the catch-all rule
    assert faults.take_failure("getMe") is None
    first = faults.take_failure("SENDMESSAGE")
    assert first is not None
    assert (first.status, first.html) == (502, True)
    assert "<h1>502 Bad Gateway</h1>" in first.body()
    assert faults.take_failure("sendMessage") is not None
    assert faults.take_failure("sendMessage") is None
    plain = Faults()
    plain.fail_next(None, 1, status=500, html=False)
    failure = plain.take_failure("x")
    assert failure is not None
    assert json.loads(failure.body()) == {
        "ok": False,
        "error_code": 500,
        "description": "Internal Server Error",
    }


def test_chat_faults() -> None:
    faults = Faults()
    moved: list[tuple[int, int]] = []
    faults.on_migrate = lambda old, new: moved.append((old, new))
    faults.forbid_chat(5)
    faults.migrate_chat(-7, -1007)
    faults.flood_chat(9, retry_after=35, count=2)
    assert faults.chat_error(5).body() == fixture("responses/err_403_blocked.json")  # type: ignore[union-attr]
    assert faults.chat_error(-7).parameters == {"migrate_to_chat_id": -1007}  # type: ignore[union-attr]
    assert moved == [(-7, -1007)]
    flood = faults.flood_error(9)
    assert flood is not None
    assert flood.headers() == {"Retry-After": "35"}
    assert flood.body() == fixture("responses/err_429_retry_after.json")
    assert faults.flood_error(9) is not None
    assert faults.flood_error(9) is None
    faults.unforbid_chat(5)
    assert faults.chat_error(5) is None
    faults.clear()
    assert faults.chat_error(-7) is None


def test_update_ids_start_from_the_wall_clock_and_grow_across_restarts() -> None:
    """A restarted emulator starts above its predecessor's last id (1000 ids a second)."""
    wall = FakeClock(1735993207.0)
    before = EmulatorState(BOT, clock=FakeClock(), wall=wall)
    last = [user_send(before, 111, f"m{i}")["update_id"] for i in range(1000)][-1]
    wall.now += 1.001  # the second instance starts a second later
    after = EmulatorState(BOT, clock=FakeClock(), wall=wall)
    first = user_send(after, 111, "after the restart")["update_id"]
    assert last < first < 2**31 - 2**24
    after.reset()  # /_emu/reset keeps going up too
    assert user_send(after, 111, "after a reset")["update_id"] > first


def test_update_ids_stay_32_bit_and_positive() -> None:
    assert time_based_update_id(0.0) == 1
    for epoch in (1735993207.0, 4102444800.0, 2_130_706.431):  # the last: just before the wrap
        assert 0 < time_based_update_id(epoch) < 2**31 - 2**24
    pinned = EmulatorState(BOT, clock=FakeClock(), wall=lambda: 1735993207.0, first_update_id=7)
    assert user_send(pinned, 111, "x")["update_id"] == 7
