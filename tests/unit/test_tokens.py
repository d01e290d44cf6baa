"""Callback tokens: what the pipeline carries back must route only where we signed it."""

from __future__ import annotations

import pytest

from gateway.core.errors import DeliveryTokenError
from gateway.core.tokens import Route, sign_route
from gateway.core.tokens import verify_route as _verify_route

SECRET = b"0123456789abcdef-secret"
BOT = 7


def verify_route(secret: bytes, token: str, now: float) -> Route:
    """This bot's check: the tokens below are signed for bot 7."""
    return _verify_route(secret, token, bot_id=BOT, now=now)


def _token(**kw: object) -> str:
    args = {"bot_id": BOT, "chat_id": -1002143658709, "reply_to": 5531, "update_id": 99, "ttl": 60}
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


def test_the_update_receive_time_rides_along_and_old_tokens_still_verify() -> None:
    """``received_at`` (the replies' end-to-end latency) is signed with the route; a
    token signed without it (before the field existed) verifies, with 0 for it."""
    assert verify_route(SECRET, _token(received_at=995.123456), now=1001.0).received_at == 995.123
    assert verify_route(SECRET, _token(), now=1001.0).received_at == 0.0
    forged = _token(received_at=995.0).split(".")
    other = _token(received_at=1.0).split(".")
    with pytest.raises(DeliveryTokenError, match="bad signature"):
        verify_route(SECRET, f"{other[0]}.{forged[1]}", now=1001.0)


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


def test_a_token_signed_for_another_bot_is_refused() -> None:
    """Same secret, correct signature, other bot id: not this bot's reply to send."""
    token = _token(bot_id=BOT + 1)
    assert _verify_route(SECRET, token, bot_id=BOT + 1, now=1000.0).bot_id == BOT + 1
    with pytest.raises(DeliveryTokenError, match="another bot"):
        _verify_route(SECRET, token, bot_id=BOT, now=1000.0)


def _non_canonical_last_char(part: str) -> str:
    """The same bytes spelled with spare low bits set in the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = {2: 15, 3: 3}[len(part) % 4]  # unused low bits of the last character
    last = alphabet.index(part[-1])
    assert last & spare == 0
    return part[:-1] + alphabet[last | 1]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t + "!!",
        lambda t: t + "=",
        lambda t: t + "==",
        lambda t: t + " ",
        lambda t: t + "  ",
        lambda t: t + "\n\n",
        lambda t: t + " =",
        lambda t: " " + t,
        lambda t: t + "\n",
        lambda t: t.replace(".", ".\t"),
        lambda t: t[:10] + " " + t[10:],
        lambda t: t[:-5] + "!" + t[-5:],
        lambda t: t.replace("-", "+").replace("_", "/") if ("-" in t or "_" in t) else t + "+",
        lambda t: t.split(".")[0] + "." + _non_canonical_last_char(t.split(".")[1]),
        lambda t: t.split(".")[0] + "==." + t.split(".")[1],
    ],
)
def test_only_the_canonical_spelling_verifies(mutate: object) -> None:
    """Lenient base64 would decode these to the same bytes; strict decoding refuses them."""
    token = _token()
    bad = mutate(token)  # type: ignore[operator]
    assert bad != token
    with pytest.raises(DeliveryTokenError):
        verify_route(SECRET, bad, now=1000.0)
