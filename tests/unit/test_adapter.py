"""Update → pipeline message, on every real payload in tests/fixtures."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import FIXTURES
from workers.worker.adapter import adapt

BOT = 7689012345


def fixture(name: str) -> dict[str, object]:
    return json.loads((FIXTURES / "updates" / name).read_text())  # type: ignore[no-any-return]


def test_private_text() -> None:
    msg = adapt(fixture("01_private_text_message.json"), BOT)
    assert msg is not None
    assert msg.client_id == "telegram_6123456789"
    assert msg.content == "Hi! Can you check the status of order 4411?"
    assert msg.timestamp == "2025-01-04T12:20:07+00:00"
    assert msg.chat_id == 6123456789 and msg.reply_to == 1287
    assert msg.metadata["username"] == "alice_novak"
    assert msg.metadata["language_code"] == "en"
    assert msg.metadata["update_id"] == 483921734
    assert set(msg.body()) == {"client_id", "content", "timestamp", "metadata"}


def test_photo_caption_and_largest_file_id() -> None:
    msg = adapt(fixture("02_private_photo_with_caption.json"), BOT)
    assert msg is not None
    assert msg.content == "Receipt for order #4411"
    assert msg.metadata["media"]["photo"].endswith("eQADNgQ")


def test_media_only_gives_empty_content() -> None:
    update = fixture("02_private_photo_with_caption.json")
    del update["message"]["caption"]  # type: ignore[index]
    msg = adapt(update, BOT)
    assert msg is not None and msg.content == ""


def test_callback_query_carries_data_and_id() -> None:
    msg = adapt(fixture("03_callback_query.json"), BOT)
    assert msg is not None
    assert msg.update_type == "callback_query"
    assert msg.content == "cancel:4411:yes"
    assert msg.chat_id == 6123456789


def test_edited_message_uses_edit_date() -> None:
    msg = adapt(fixture("04_edited_message.json"), BOT)
    assert msg is not None
    assert msg.content.endswith("4412?")
    assert msg.metadata["edited"] is True
    assert msg.timestamp == "2025-01-04T12:21:02+00:00"


def test_group_command_keeps_group_chat() -> None:
    msg = adapt(fixture("05_supergroup_bot_command.json"), BOT)
    assert msg is not None
    assert msg.chat_id == -1002143658709
    assert msg.client_id == "telegram_5987654321"
    assert msg.metadata["chat_type"] == "supergroup"


def test_other_update_types_are_not_forwarded() -> None:
    assert adapt(fixture("06_my_chat_member_bot_blocked.json"), BOT) is None


@pytest.mark.parametrize(
    "update",
    [
        {"update_id": 1},
        {"update_id": 1, "message": {"message_id": 1, "chat": {"id": 1}, "date": 0}},
        {"update_id": 1, "channel_post": {"message_id": 1, "chat": {"id": -100}}},
        {"update_id": 1, "message": {"from": "not-a-dict"}},
    ],
)
def test_odd_updates_do_not_crash(update: dict[str, object]) -> None:
    assert adapt(update, BOT) is None


def _user() -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries(
        {"id": st.integers(1, 2**40), "is_bot": st.booleans(), "first_name": st.text(max_size=20)},
        optional={"username": st.text(max_size=10), "language_code": st.sampled_from(["en", "ru"])},
    )


def _message() -> st.SearchStrategy[dict[str, object]]:
    chat = st.fixed_dictionaries(
        {
            "id": st.integers(-(10**13), 10**12),
            "type": st.sampled_from(["private", "group", "supergroup"]),
        }
    )
    return st.fixed_dictionaries(
        {"message_id": st.integers(1, 10**6), "date": st.integers(0, 2**31), "chat": chat},
        optional={
            "from": _user(),
            "text": st.text(max_size=50),
            "caption": st.text(max_size=50),
            "photo": st.lists(
                st.fixed_dictionaries(
                    {
                        "file_id": st.text(min_size=1, max_size=10),
                        "file_unique_id": st.text(max_size=5),
                        "width": st.integers(1, 9),
                        "height": st.integers(1, 9),
                    }
                ),
                max_size=3,
            ),
        },
    )


@settings(max_examples=300, deadline=None)
@given(
    update=st.one_of(
        st.builds(lambda m, u: {"update_id": u, "message": m}, _message(), st.integers(0, 2**31)),
        st.builds(
            lambda m, u: {"update_id": u, "edited_message": m}, _message(), st.integers(0, 2**31)
        ),
        st.builds(
            lambda m, f, d, u: {
                "update_id": u,
                "callback_query": {
                    "id": "1",
                    "from": f,
                    "message": m,
                    "chat_instance": "x",
                    "data": d,
                },
            },
            _message(),
            _user(),
            st.text(max_size=20),
            st.integers(0, 2**31),
        ),
        st.dictionaries(st.text(max_size=10), st.integers() | st.text(), max_size=3).map(
            lambda d: {"update_id": 1, **d}
        ),
    )
)
def test_generated_updates_adapt_or_are_skipped(update: dict[str, object]) -> None:
    """Any Update-shaped input gives a well-formed pipeline message or None, never a crash."""
    msg = adapt(update, BOT)
    if msg is None:
        return
    assert msg.client_id.startswith("telegram_")
    assert isinstance(msg.content, str)
    assert isinstance(msg.chat_id, int)
    orjson.dumps(msg.body())  # serialisable as the pipeline request
