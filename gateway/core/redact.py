"""Credentials out of echoed URLs: the one function every error line and log line uses.

A URL may carry a password in its userinfo (``redis://user:pass@host``, ``redis://:pass@host``)
or in a query parameter (``?password=…``). Whatever echoes a URL (a configuration error's
``(got …)``, a startup log line, the CLI's one-line errors) passes it through ``redact_url``
first. The bot token is the logging filter's job (``gateway.core.logs.redact``).
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://userinfo@ — greedy up to the last '@' of the URL token: a password with an
# unescaped '@' or '/' is still hidden whole (over-hiding a path's '@' is the safe side).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>]*@")
# user:pass@host with no scheme (a URL typed without it): a ':' before the '@'.
_BARE_USERINFO = re.compile(r"(?<![\w/:.+-])[^\s'\"<>@/:]*:[^\s'\"<>@/]*@(?=[\w\[])")
_QUERY_SECRET = re.compile(
    r"(?i)(?P<key>[?&;](?:password|passwd|pass|pwd|secret|token|auth|key|api_key|apikey"
    r"|access_token|sig|signature)=)[^&;#\s'\"<>]*"
)


def redact_url(text: str) -> str:
    """``text`` (a URL, or a line with URLs in it) with userinfo and credential query
    values replaced by ``***``: ``redis://user:pw@h:6379/0`` → ``redis://***@h:6379/0``."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    text = _BARE_USERINFO.sub(f"{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}{MASK}", text)
