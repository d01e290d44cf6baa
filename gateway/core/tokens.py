"""Signed callback tokens: the routing of a pipeline reply, tamper-proof (pure)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

import orjson

from gateway.core.errors import DeliveryTokenError


@dataclass(frozen=True, slots=True)
class Route:
    """Where a pipeline reply goes: which bot, chat, message to reply to, which update."""

    bot_id: int
    chat_id: int
    reply_to: int | None
    update_id: int
    expires_at: int
    received_at: float = 0.0  # when the ingress received the update (0: not known)
    business_connection_id: str | None = None  # a business chat's: replies go through it


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def _unb64(text: str) -> bytes:
    """Strict: only the unpadded URL-safe alphabet, and only the one canonical spelling of
    the bytes (``<token>!!``, padding, whitespace and spare low bits do not decode)."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical unpadded base64url")
    return data


def _opt_text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("not a non-empty string")
    return value


def sign_route(
    secret: bytes,
    *,
    bot_id: int,
    chat_id: int,
    reply_to: int | None,
    update_id: int,
    ttl: int,
    now: float | None = None,
    received_at: float = 0.0,
    business_connection_id: str | None = None,
) -> str:
    """A URL-safe token ``<payload>.<hmac>`` that carries the route and its expiry (and,
    when given, when the update was received: the replies' end-to-end latency; the
    business connection a business chat's replies are sent through)."""
    expires = int((time.time() if now is None else now) + ttl)
    route: dict[str, object] = {"b": bot_id, "c": chat_id, "m": reply_to, "u": update_id}
    route["e"] = expires
    if received_at:
        route["r"] = round(received_at, 3)
    if business_connection_id:
        route["bc"] = business_connection_id
    payload = _b64(orjson.dumps(route))
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def route_bot_id(token: str) -> int:
    """The bot a callback token *claims* to be for, read before its signature is checked
    (the key that checks it is that bot's: ``gateway.core.bots.delivery_key``); trust
    nothing else of the token before ``verify_route``. ``DeliveryTokenError`` if malformed."""
    payload, sep, mac_text = token.partition(".")
    if not sep or not payload or not mac_text or len(token) > 512:
        raise DeliveryTokenError("malformed token")
    try:
        bot_id = orjson.loads(_unb64(payload))["b"]
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise DeliveryTokenError("malformed token") from None
    if not isinstance(bot_id, int) or isinstance(bot_id, bool) or bot_id < 0:
        raise DeliveryTokenError("malformed token")
    return bot_id


def verify_route(secret: bytes, token: str, *, bot_id: int, now: float | None = None) -> Route:
    """The route of a token signed for ``bot_id``; ``DeliveryTokenError`` if forged,
    malformed, expired or signed for another bot (a ``DELIVERY_SECRET`` shared between
    deployments must not let one bot send another's replies)."""
    payload, sep, mac_text = token.partition(".")
    if not sep or not payload or not mac_text or len(token) > 512:
        raise DeliveryTokenError("malformed token")
    try:
        given = _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise DeliveryTokenError("malformed token") from None
    expected = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(given, expected):
        raise DeliveryTokenError("bad signature")
    try:
        data = orjson.loads(_unb64(payload))
        route = Route(
            bot_id=int(data["b"]),
            chat_id=int(data["c"]),
            reply_to=None if data["m"] is None else int(data["m"]),
            update_id=int(data["u"]),
            expires_at=int(data["e"]),
            received_at=float(data.get("r") or 0.0),  # tokens signed before it: absent
            business_connection_id=_opt_text(data.get("bc")),
        )
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise DeliveryTokenError("malformed token") from None
    if route.bot_id != bot_id:
        raise DeliveryTokenError("token is for another bot")
    if route.expires_at < (time.time() if now is None else now):
        raise DeliveryTokenError("token expired")
    return route
