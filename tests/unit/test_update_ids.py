"""Chat and user ids of an update: JSON booleans are not ids (``bool`` is an ``int``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.contracts import extract_update_ids


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        ({"update_id": 1, "message": {"chat": {"id": 42}, "from": {"id": 7}}}, (42, 7)),
        ({"update_id": 1, "message": {"chat": {"id": True}, "from": {"id": 7}}}, (7, 7)),
        ({"update_id": 1, "message": {"chat": {"id": True}, "from": {"id": False}}}, (None, None)),
        ({"update_id": 1, "message": {"chat": {"id": 42}, "from": {"id": True}}}, (42, None)),
        ({"update_id": 1, "callback_query": {"from": {"id": False}}}, (None, None)),
    ],
)
def test_booleans_are_not_ids(update: dict[str, Any], expected: tuple[int | None, ...]) -> None:
    assert extract_update_ids(update) == expected
