"""Logging setup: text or JSON lines, with the bot token and URL credentials redacted from
everything."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from gateway.core.redact import redact_url

_BOT_URL_TOKEN = re.compile(r"(bot)?\d{3,20}:[A-Za-z0-9_-]{20,}")
_REDACTED = "<redacted>"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove bot tokens (any ``<digits>:<secret>`` shape), known secrets and credentials
    inside URLs (``redis://user:pass@…``, ``?password=…``) from text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return redact_url(_BOT_URL_TOKEN.sub(lambda m: (m.group(1) or "") + _REDACTED, text))


class RedactingFilter(logging.Filter):
    """Renders each record's message once, redacted, so no argument can leak a token."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted, self.secrets)
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"update_id": ...}`` fields are kept."""

    _skip = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._skip and not key.startswith("_"):
                out[key] = value
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text", secrets: tuple[str, ...] = ()) -> None:
    """Configure the root logger once per process (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO, and Bot API URLs contain the token.
    for noisy in ("httpx", "httpcore", "aiogram.event", "uvicorn.access", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
