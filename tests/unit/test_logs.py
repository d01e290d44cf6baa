"""The bot token never reaches a log line, in messages, arguments or tracebacks."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway.core.logs import JsonFormatter, RedactingFilter, redact

TOKEN = "7689012345:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


def test_redact_removes_any_token_shape() -> None:
    url = f"https://api.telegram.org/bot{TOKEN}/sendMessage"
    assert TOKEN not in redact(url)
    assert redact(url) == "https://api.telegram.org/bot<redacted>/sendMessage"
    assert redact(f"token {TOKEN} here") == "token <redacted> here"
    assert redact("secret=abc", ("abc",)) == "secret=<redacted>"


def test_log_lines_hide_credentials_inside_urls(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    """A URL with a password, logged by any module (a pipeline error, a Redis error), is
    redacted by the handler's filter, not only where the CLI echoes it."""
    logger, stream = captured
    logger.warning("POST %s failed", "http://crm:s3cret@pipeline:8090/api/messages/")
    logger.error("redis %s down", "redis://default:hunter2@redis:6379/0?password=hunter2")
    out = stream.getvalue()
    assert "s3cret" not in out and "hunter2" not in out
    assert "http://***@pipeline:8090/api/messages/" in out


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter((TOKEN,)))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_args_and_tracebacks_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("calling %s", f"https://x/bot{TOKEN}/getMe", extra={"update_id": 7})
    try:
        raise RuntimeError(f"failed at https://x/bot{TOKEN}/getMe")
    except RuntimeError:
        logger.exception("boom")
    out = stream.getvalue()
    assert TOKEN not in out
    assert TOKEN.split(":")[1] not in out
    first = json.loads(out.splitlines()[0])
    assert first["update_id"] == 7 and first["level"] == "info"
    assert "<redacted>" in first["msg"]
