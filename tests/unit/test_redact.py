"""``redact_url``: the one function that takes credentials out of echoed URLs."""

from __future__ import annotations

import pytest

from gateway.core.redact import redact_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://user:pass@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("redis://:pass@redis:6379/0", "redis://***@redis:6379/0"),
        ("rediss://default:p@ss/w0rd@cache.example:6380", "rediss://***@cache.example:6380"),
        ("https://user@host/x", "https://***@host/x"),
        ("unix://:pw@/run/redis.sock?db=0", "unix://***@/run/redis.sock?db=0"),
        ("user:pass@host:6379", "***@host:6379"),
        ("https://h/p?x=1&password=hunter2&y=2", "https://h/p?x=1&password=***&y=2"),
        ("https://h/p?TOKEN=abc#frag", "https://h/p?TOKEN=***#frag"),
        (
            "(got 'ftp://user:secret@host') then http://a:b@h2/",
            "(got 'ftp://***@host') then http://***@h2/",
        ),
    ],
)
def test_credentials_are_masked(text: str, expected: str) -> None:
    assert redact_url(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "redis://127.0.0.1:6379/0",
        "https://api.telegram.org",
        "http://[::1]:8080/webhook/telegram",
        "https://h/p?page=2&q=a",
        "PARTITIONS: Input should be a valid integer (got 'zero')",
        "write to ops@example.com",
        "",
    ],
)
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert redact_url(text) == text
