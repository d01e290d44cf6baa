"""Callback tokens: what the pipeline carries back must route only where we signed it."""

from __future__ import annotations

import pytest

from gateway.errors import DeliveryTokenError
from gateway.tokens import sign_route, verify_route

SECRET = b"0123456789abcdef-secret"


def _token(**kw: object) -> str:
    args = {"bot_id": 7, "chat_id": -1002143658709, "reply_to": 5531, "update_id": 99, "ttl": 60}
    args.update(kw)
    return sign_route(SECRET, now=1000.0, **args)  # type: ignore[arg-type]


def test_round_trip_keeps_the_route() -> None:
    route = verify_route(SECRET, _token(), now=1001.0)
    assert (route.bot_id, route.chat_id, route.reply_to, route.update_id) == (
        7,
        -1002143658709,
        5531,
        99,
    )
    assert route.expires_at == 1060


def test_token_is_url_safe() -> None:
    token = _token()
    assert all(c.isalnum() or c in "-_." for c in token)


def test_no_reply_to_is_kept_as_none() -> None:
    assert verify_route(SECRET, _token(reply_to=None), now=1000.0).reply_to is None


def test_expired_token_is_refused() -> None:
    with pytest.raises(DeliveryTokenError, match="expired"):
        verify_route(SECRET, _token(ttl=60), now=1061.0)


def test_other_secret_is_refused() -> None:
    with pytest.raises(DeliveryTokenError, match="signature"):
        verify_route(b"another-secret-0123456", _token(), now=1000.0)


def test_tampered_payload_is_refused() -> None:
    """Swapping in another chat's payload with the old signature must fail."""
    payload, mac = _token().split(".")
    other_payload = _token(chat_id=1).split(".")[0]
    assert other_payload != payload
    with pytest.raises(DeliveryTokenError):
        verify_route(SECRET, f"{other_payload}.{mac}", now=1000.0)


@pytest.mark.parametrize("bad", ["", ".", "abc", "abc.", ".abc", "a.b.c", "!!!.???", "x" * 600])
def test_malformed_tokens_are_refused(bad: str) -> None:
    with pytest.raises(DeliveryTokenError):
        verify_route(SECRET, bad, now=1000.0)
