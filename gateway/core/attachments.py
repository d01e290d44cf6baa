"""Attachment references: the one rule for what may name a photo or document (pure).

A reference goes to the Bot API as the ``photo``/``document`` parameter. Only two kinds
are accepted: an ``http://`` or ``https://`` URL with a host (Telegram fetches it), and a
Telegram file id. Everything else is refused, because a local ``telegram-bot-api
--local`` server reads ``file:/…`` references from its own disk and ``attach://…`` names
a multipart part the gateway never sends.

File ids are base64url text; the real ones (tests/fixtures/telegram/updates) are 70+
characters, so 20 is a generous floor that still refuses short words and paths.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import urlsplit

FILE_ID = re.compile(r"[A-Za-z0-9_-]{20,512}")
MAX_URL_LENGTH = 2048
MEDIA_FIELDS = ("photo", "document", "thumbnail")  # payload fields that name a file
ALLOWED = "only http(s):// URLs with a host and Telegram file ids are accepted"


def _bad_char(c: str) -> bool:
    return c.isspace() or unicodedata.category(c).startswith("C")


def attachment_ref_problem(ref: object) -> str | None:
    """Why ``ref`` may not be sent as an attachment, or ``None`` when it may."""
    if not isinstance(ref, str):
        return f"must be a string ({ALLOWED})"
    if not ref:
        return f"is empty ({ALLOWED})"
    if any(_bad_char(c) for c in ref):
        return "contains whitespace or control characters"
    if FILE_ID.fullmatch(ref):
        return None
    scheme, colon, rest = ref.partition(":")
    if colon and scheme.lower() in ("http", "https") and rest.startswith("//"):
        if len(ref) > MAX_URL_LENGTH:
            return f"URL is longer than {MAX_URL_LENGTH} characters"
        if "\\" in ref:
            return "URL contains a backslash"
        try:
            parts = urlsplit(ref)
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            return "is not a valid URL"
        if not parts.hostname:
            return "URL has no host"
        return None
    if colon and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return f"scheme {scheme.lower()}: is not allowed ({ALLOWED})"
    return f"is neither a URL nor a Telegram file id ({ALLOWED})"


def check_attachment_ref(ref: object, what: str = "attachment") -> str:
    """``ref`` itself when acceptable, else ``ValueError`` with the reason."""
    problem = attachment_ref_problem(ref)
    if problem is not None:
        raise ValueError(f"{what} {problem}")
    assert isinstance(ref, str)
    return ref
