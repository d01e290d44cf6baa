"""Attachment references: only http(s) URLs with a host and Telegram file ids pass."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.attachments import FILE_ID, attachment_ref_problem, check_attachment_ref
from tests.helpers import FIXTURES


def _fixture_file_ids() -> list[str]:
    ids: set[str] = set()
    for path in sorted((FIXTURES / "updates").glob("*.json")):
        ids |= set(re.findall(r'"file_id":\s*"([^"]+)"', path.read_text()))
    return sorted(ids)


def test_the_real_file_ids_are_accepted() -> None:
    """The rule is taken from the recorded updates, so every real file id there passes."""
    ids = _fixture_file_ids()
    assert ids, "the fixtures carry photos"
    for file_id in ids:
        assert attachment_ref_problem(file_id) is None, file_id


@pytest.mark.parametrize(
    "ref",
    [
        "https://example.com/a.png",
        "http://example.com/report.pdf?x=1&y=2#top",
        "https://cdn.example.com:8443/a/b/c.jpg",
        "HTTPS://EXAMPLE.COM/A.PNG",
        "https://[2001:db8::1]/a.png",
        "https://example.com/%D1%84%D0%B0%D0%B9%D0%BB.pdf",
        "https://example.com/файл.pdf",
        "BQACAgIAAxkBAAIFCGd5Qk7rP0a1VbX3c9Yt2mWqLz8hAALm4jEbR3rIS0pQm2fA1sG9AQ",
    ],
)
def test_urls_and_file_ids_are_accepted(ref: str) -> None:
    assert attachment_ref_problem(ref) is None
    assert check_attachment_ref(ref) == ref


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("file:///etc/passwd", "scheme file:"),
        ("file:/etc/passwd", "scheme file:"),
        ("FILE:///etc/passwd", "scheme file:"),
        ("gopher://example.com/_x", "scheme gopher:"),
        ("ftp://example.com/a.png", "scheme ftp:"),
        ("attach://photo", "scheme attach:"),
        ("javascript:alert(1)", "scheme javascript:"),
        ("data:image/png;base64,AAAA", "scheme data:"),
        ("/etc/passwd", "neither"),
        ("../x", "neither"),
        ("./a.png", "neither"),
        ("C:\\Windows\\win.ini", "not allowed"),
        ("AgAC123", "neither"),  # too short to be a file id
        ("", "empty"),
        ("https://", "no host"),
        ("http:///etc/passwd", "no host"),
        ("https://:443/a", "no host"),
        ("https://example.com:port/a", "not a valid URL"),
        ("https://example.com\\@evil/a", "backslash"),
        ("https://example.com/a b.png", "whitespace"),
        (" https://example.com/a.png", "whitespace"),
        ("https://example.com/a.png\n", "whitespace"),
        ("https://example.com/\x00a.png", "control"),
        ("https://example.com/\u202ea.png", "control"),
        ("AgACAgIAAxkBAAIFCGd5Qk7rP0a1Vb\tX3c9Yt2", "whitespace"),
        ("https://example.com/" + "a" * 2100, "longer than"),
        ("A" * 600, "neither"),
    ],
)
def test_everything_else_is_refused_with_a_reason(ref: str, reason: str) -> None:
    problem = attachment_ref_problem(ref)
    assert problem is not None and reason in problem, problem
    with pytest.raises(ValueError, match="photo"):
        check_attachment_ref(ref, "photo")


@pytest.mark.parametrize("ref", [None, 5, ["https://example.com/a.png"], {"url": "x"}])
def test_non_strings_are_refused(ref: object) -> None:
    assert attachment_ref_problem(ref) is not None


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_anything_accepted_is_a_url_or_a_file_id(ref: str) -> None:
    """Whatever passes starts with http(s):// and has a host, or is base64url text."""
    if attachment_ref_problem(ref) is None:
        lowered = ref.lower()
        is_url = lowered.startswith(("http://", "https://"))
        assert is_url or FILE_ID.fullmatch(ref)
        assert not any(c.isspace() for c in ref)
        if not is_url:
            assert not any(c in ref for c in "/.:\\")


@given(
    st.sampled_from(["file", "gopher", "ftp", "attach", "ws", "ldap", "dict", "sftp", "jar"]),
    st.text(max_size=40),
)
def test_no_other_scheme_passes(scheme: str, rest: str) -> None:
    assert attachment_ref_problem(f"{scheme}:{rest}") is not None
    assert attachment_ref_problem(f"{scheme.upper()}://{rest}") is not None


@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
        min_size=20,
        max_size=512,
    )
)
def test_base64url_text_of_file_id_length_passes(ref: str) -> None:
    assert attachment_ref_problem(ref) is None


def test_fixture_ids_are_what_the_rule_was_taken_from() -> None:
    """Guard against the fixtures drifting to something the rule no longer describes."""
    update = json.loads((FIXTURES / "updates" / "02_private_photo_with_caption.json").read_text())
    assert all(FILE_ID.fullmatch(p["file_id"]) for p in update["message"]["photo"])
