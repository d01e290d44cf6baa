"""Outcome values: typed effects, and what one finish can carry."""

import pytest

from gateway.core.contracts import Reason
from gateway.runtime.consumer import Ack, Dead, Marker, Publish


def test_an_ack_splits_its_effects_into_publishes_and_a_marker() -> None:
    """The finish reads the entries to publish in order, and the one marker."""
    ack = Ack((Publish("a", {"x": "1"}), Marker("m", 60), Publish("b", {"y": "2"})))
    assert [p.stream for p in ack.publishes] == ["a", "b"]
    assert ack.marker == Marker("m", 60)
    assert Ack().publishes == () and Ack().marker is None


@pytest.mark.parametrize("make", [Ack, lambda e: Dead(Reason.HANDLER_ERROR, "x", e)])
def test_one_finish_sets_at_most_one_marker(make: object) -> None:
    """FINISH_LUA sets one marker key: a second is refused when the outcome is built."""
    with pytest.raises(ValueError, match="at most one marker"):
        make((Marker("a", 1), Marker("b", 1)))  # type: ignore[operator]
