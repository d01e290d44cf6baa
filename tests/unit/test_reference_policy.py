"""The reference pipeline's callback policy: what a log line may show of a callback URL,
and which hosts a callback may go to (pure functions of gateway.testkit.reference.policy)."""

from __future__ import annotations

import pytest

from gateway.testkit.reference.policy import callback_allow_list, redact_url

TOKEN = "v1.eyJjIjoxMjN9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"http://ingress:8080/api/delivery/{TOKEN}", "http://ingress:8080/api/delivery/…"),
        (
            f"https://gw.example.com/api/delivery/{TOKEN}?x={TOKEN}#{TOKEN}",
            "https://gw.example.com/api/delivery/…",
        ),
        (f"http://user:{TOKEN}@host/a/{TOKEN}", "http://host/a/…"),
        (f"http://host/{TOKEN}", "http://host/…"),
        (f"http://host/a/b/c/{TOKEN}", "http://host/a/b/…"),
        (f"http://[::1]:9/api/{TOKEN}", "http://[::1]:9/api/…"),
        ("http://host:99999/x", "<unparsable URL>"),
    ],
)
def test_redacted_url_keeps_host_and_path_prefix_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert TOKEN not in redact_url(url)


def test_default_allow_list_is_the_public_url_host() -> None:
    assert callback_allow_list([], "http://ingress:8080") == {("ingress", None)}
    assert callback_allow_list([], "https://GW.example.com/base") == {("gw.example.com", None)}


def test_loopback_allows_every_loopback_name() -> None:
    expected = {("127.0.0.1", None), ("localhost", None), ("::1", None)}
    assert callback_allow_list([], None) == expected
    assert callback_allow_list([], "http://127.0.0.1:8080") == expected
    assert callback_allow_list(["localhost:8080"], None) == expected | {("localhost", 8080)}


def test_explicit_hosts_replace_the_default() -> None:
    got = callback_allow_list(["ingress:8080", " gw.example.com ", ""], "http://other:1")
    assert got == {("ingress", 8080), ("gw.example.com", None)}
    assert callback_allow_list(["http://ingress:8080/x"], None) == {("ingress", 8080)}


def test_a_bad_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="not a host"):
        callback_allow_list([":8080"], None)
