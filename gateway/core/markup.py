"""Inline keyboards and link preview options of a pipeline reply, checked (pure).

What a pipeline may send, and Telegram's own limits behind each bound:

    buttons: [[{"text": "Yes", "callback_data": "order:yes"}, {"text": "Site", "url": "https://x"}]]
    link_preview_options: {"is_disabled": true}

- a button has a non-empty ``text`` and exactly one of ``callback_data`` (1-64 bytes of
  UTF-8, the Bot API's bound) or ``url`` (``http://``/``https://`` with a host, or
  ``tg://``; nothing a client would run or open locally, such as ``javascript:``);
- at most ``MAX_ROW_BUTTONS`` buttons in a row and ``MAX_BUTTONS`` in a keyboard
  (Telegram's server refuses or drops more); ``MAX_BUTTON_TEXT`` is our own bound;
- link preview options are the Bot API's ``LinkPreviewOptions`` fields, nothing else.

Each function returns the Bot API value (``reply_markup``, ``link_preview_options``) or
raises ``ReplyShapeError`` saying what is wrong (the callback answers 422 with it).
"""

from __future__ import annotations

import unicodedata
from typing import Any
from urllib.parse import urlsplit

from gateway.core.errors import ReplyShapeError

MAX_CALLBACK_BYTES = 64
MAX_ROW_BUTTONS = 8
MAX_BUTTONS = 100
MAX_BUTTON_TEXT = 128
MAX_URL_LENGTH = 2048
PREVIEW_FLAGS = ("is_disabled", "prefer_small_media", "prefer_large_media", "show_above_text")


def _bad_char(c: str) -> bool:
    return c.isspace() or unicodedata.category(c).startswith("C")


def url_problem(url: object) -> str | None:
    """Why ``url`` may not be a button's or a preview's link, or None when it may."""
    if not isinstance(url, str) or not url:
        return "must be a non-empty string"
    if len(url) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(_bad_char(c) for c in url) or "\\" in url:
        return "contains whitespace, control characters or a backslash"
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("http", "https", "tg") or not rest.startswith("//"):
        return "must be an http://, https:// or tg:// URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if not (parts.hostname if scheme != "tg" else parts.netloc):
        return "has no host"
    return None


def _button(raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ReplyShapeError(f"{where} must be an object with 'text' and 'callback_data' or 'url'")
    unknown = sorted(set(raw) - {"text", "callback_data", "url"})
    if unknown:
        raise ReplyShapeError(f"{where} has unsupported fields: {', '.join(unknown)}")
    text = raw.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ReplyShapeError(f"{where} needs a non-empty 'text'")
    if len(text) > MAX_BUTTON_TEXT:
        raise ReplyShapeError(f"{where}: text is longer than {MAX_BUTTON_TEXT} characters")
    data, url = raw.get("callback_data"), raw.get("url")
    if (data is None) == (url is None):
        raise ReplyShapeError(f"{where} needs exactly one of 'callback_data' and 'url'")
    if data is not None:
        if not isinstance(data, str) or not 1 <= len(data.encode()) <= MAX_CALLBACK_BYTES:
            raise ReplyShapeError(
                f"{where}: callback_data must be 1-{MAX_CALLBACK_BYTES} bytes of text"
            )
        return {"text": text, "callback_data": data}
    problem = url_problem(url)
    if problem is not None:
        raise ReplyShapeError(f"{where}: url {problem}")
    assert isinstance(url, str)
    return {"text": text, "url": url}


def inline_keyboard(raw: Any) -> dict[str, Any] | None:
    """``buttons`` (a list of rows, each a list of buttons) as a ``reply_markup``; None
    for none (absent or an empty list)."""
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list) or not all(isinstance(row, list) for row in raw):
        raise ReplyShapeError("'buttons' must be a list of rows, each a list of buttons")
    total = sum(len(row) for row in raw)
    if total > MAX_BUTTONS:
        raise ReplyShapeError(f"at most {MAX_BUTTONS} buttons per reply (got {total})")
    rows: list[list[dict[str, str]]] = []
    for r, row in enumerate(raw, start=1):
        if not row:
            raise ReplyShapeError(f"buttons row {r} is empty")
        if len(row) > MAX_ROW_BUTTONS:
            raise ReplyShapeError(f"at most {MAX_ROW_BUTTONS} buttons per row (row {r})")
        rows.append([_button(b, f"button {c} of row {r}") for c, b in enumerate(row, start=1)])
    return {"inline_keyboard": rows}


def link_preview_options(raw: Any) -> dict[str, Any] | None:
    """``link_preview_options`` checked against the Bot API's ``LinkPreviewOptions``."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ReplyShapeError("'link_preview_options' must be an object")
    unknown = sorted(set(raw) - {*PREVIEW_FLAGS, "url"})
    if unknown:
        raise ReplyShapeError(f"link_preview_options has unsupported fields: {', '.join(unknown)}")
    for flag in PREVIEW_FLAGS:
        if flag in raw and not isinstance(raw[flag], bool):
            raise ReplyShapeError(f"link_preview_options.{flag} must be true or false")
    if raw.get("prefer_small_media") and raw.get("prefer_large_media"):
        raise ReplyShapeError("link_preview_options: prefer_small_media or prefer_large_media")
    if "url" in raw:
        problem = url_problem(raw["url"])
        if problem is not None or str(raw["url"]).lower().startswith("tg:"):
            raise ReplyShapeError(
                f"link_preview_options.url {problem or 'must be an http(s):// URL'}"
            )
    return dict(raw)
