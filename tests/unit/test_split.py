"""Unit and property tests for ``workers.sender.split`` (pure text splitting)."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.sender.split import CAPTION_LIMIT, TEXT_LIMIT, split_text, utf16_len

TAG = re.compile(r"<(/?)([a-zA-Z][\w-]*)((?:[^<>\"']|\"[^\"]*\"|'[^']*')*)>")


def squash(s: str) -> str:
    return "".join(s.split())


def visible(chunk: str) -> str:
    return html.unescape(TAG.sub("", chunk))


def assert_balanced(chunk: str) -> None:
    stack: list[str] = []
    for m in TAG.finditer(chunk):
        name = m.group(2).lower()
        if m.group(1):
            assert stack, f"close without open in {chunk!r}"
            assert stack.pop() == name, f"misnested {name} in {chunk!r}"
        else:
            stack.append(name)
    assert not stack, f"unclosed {stack} in {chunk!r}"


def test_constants() -> None:
    assert TEXT_LIMIT == 4096
    assert CAPTION_LIMIT == 1024


def test_utf16_len() -> None:
    assert utf16_len("") == 0
    assert utf16_len("abc") == 3
    assert utf16_len("привет") == 6
    assert utf16_len("😀") == 2
    assert utf16_len("👩\u200d💻") == 5


def test_exact_limit_is_one_chunk() -> None:
    text = "a" * 4096
    assert split_text(text) == [text]


def test_one_over_the_limit_splits() -> None:
    text = "a" * 4097
    chunks = split_text(text)
    assert [len(c) for c in chunks] == [4096, 1]
    assert "".join(chunks) == text


def test_fitting_text_is_returned_unchanged() -> None:
    text = "  hello\n\nworld  "
    assert split_text(text) == [text]


@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \n"])
def test_blank_text_gives_no_chunks(text: str) -> None:
    assert split_text(text) == []
    assert split_text(text, parse_mode="HTML") == []


def test_emoji_at_the_boundary_moves_to_next_chunk() -> None:
    text = "a" * 4095 + "😀" + "b"
    chunks = split_text(text)
    assert chunks == ["a" * 4095, "😀b"]
    assert all(utf16_len(c) <= 4096 for c in chunks)


def test_emoji_counts_two_units() -> None:
    text = "😀" * 2048
    assert split_text(text) == [text]
    assert len(split_text(text + "😀")) == 2


def test_surrogate_pairs_never_split() -> None:
    text = "😀" * 3000 + "x" + "𝄞" * 3000
    chunks = split_text(text, 100)
    for chunk in chunks:
        assert utf16_len(chunk) <= 100
        chunk.encode("utf-8")  # a lone surrogate would raise
    assert "".join(chunks) == text


def test_zwj_sequence_and_combining_marks_stay_together() -> None:
    family = "👨\u200d👩\u200d👧"  # 8 units
    chunks = split_text(family * 10, 12)
    assert all(c == family for c in chunks)
    accented = "e\u0301" * 10
    assert all(c == "e\u0301" * 2 for c in split_text(accented, 5))
    flags = "🇺🇦🇩🇪🇫🇷"
    assert split_text(flags, 8) == ["🇺🇦🇩🇪", "🇫🇷"]
    assert split_text(flags, 6) == ["🇺🇦", "🇩🇪", "🇫🇷"]
    heart = "❤\ufe0f" * 3
    assert split_text(heart, 3) == ["❤\ufe0f", "❤\ufe0f", "❤\ufe0f"]


def test_cluster_longer_than_limit_is_still_split() -> None:
    text = "a" + "\u0301" * 20
    chunks = split_text(text, 8)
    assert "".join(chunks) == text
    assert all(utf16_len(c) <= 8 for c in chunks)


def test_prefers_paragraph_over_line_break() -> None:
    text = "first para\n\nsecond line\nthird line goes on"
    assert split_text(text, 30) == ["first para", "second line\nthird line goes on"]
    assert split_text(text, 25) == ["first para", "second line", "third line goes on"]


def test_prefers_line_over_sentence() -> None:
    text = "One. Two\nThree. Four five six"
    assert split_text(text, 20)[0] == "One. Two"


def test_prefers_sentence_over_word() -> None:
    text = "One two. Three four five six"
    assert split_text(text, 20)[0] == "One two."
    assert split_text("Really?! Yes it is indeed", 15)[0] == "Really?!"
    assert split_text("Wait… what is going on", 15)[0] == "Wait…"


def test_prefers_word_over_hard_split() -> None:
    assert split_text("alpha beta gamma delta", 12) == ["alpha beta", "gamma delta"]


def test_space_just_after_the_limit_is_a_word_boundary() -> None:
    assert split_text("abcd efgh", 4) == ["abcd", "efgh"]


def test_single_long_word_is_hard_split() -> None:
    word = "x" * 10000
    chunks = split_text(word)
    assert [len(c) for c in chunks] == [4096, 4096, 1808]
    assert "".join(chunks) == word


def test_cyrillic_text() -> None:
    sentence = "Привет, это длинное сообщение на русском языке. "
    text = sentence * 200
    chunks = split_text(text, 1000)
    assert all(utf16_len(c) <= 1000 for c in chunks)
    assert all(c.rstrip().endswith("языке.") for c in chunks)
    assert squash("".join(chunks)) == squash(text)


def test_order_preserved_and_no_empty_chunks() -> None:
    words = [f"w{i:04d}" for i in range(3000)]
    text = " ".join(words)
    chunks = split_text(text, 500)
    assert all(c and c.strip() for c in chunks)
    assert " ".join(chunks).split() == words


def test_caption_limit() -> None:
    chunks = split_text("word " * 500, CAPTION_LIMIT)
    assert len(chunks) == 3
    assert all(utf16_len(c) <= CAPTION_LIMIT for c in chunks)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="limit"):
        split_text("abc", 1)
    with pytest.raises(ValueError, match="parse_mode"):
        split_text("abc", parse_mode="BBCode")


def test_html_chunks_are_balanced_and_measured_by_visible_text() -> None:
    body = '<b>bold <i>both</i></b> <a href="https://e.x/?a=1&amp;b=2">link</a> &lt;x&gt; '
    text = body * 300
    chunks = split_text(text, 200, parse_mode="HTML")
    assert len(chunks) > 1
    for chunk in chunks:
        assert_balanced(chunk)
        assert utf16_len(visible(chunk)) <= 200
    assert squash("".join(visible(c) for c in chunks)) == squash(visible(text))


def test_html_reopens_tags_with_attributes() -> None:
    text = '<a href="https://e.x/">' + "word " * 10 + "</a>"
    chunks = split_text(text, 20, parse_mode="HTML")
    assert chunks[0] == '<a href="https://e.x/">word word word word</a>'
    assert all(c.startswith('<a href="https://e.x/">') and c.endswith("</a>") for c in chunks)


def test_html_never_cuts_tags_or_entities() -> None:
    text = "&amp;" * 30 + "<b>" + "&lt;" * 30 + "</b>"
    chunks = split_text(text, 16, parse_mode="HTML")
    for chunk in chunks:
        assert_balanced(chunk)
        assert re.fullmatch(r"(?:&amp;|&lt;|</?b>)+", chunk), chunk
        assert utf16_len(visible(chunk)) <= 16
    assert "".join(visible(c) for c in chunks) == "&" * 30 + "<" * 30


def test_html_tag_length_does_not_count() -> None:
    text = '<a href="https://example.com/a/very/long/url">hi</a>'
    assert split_text(text, 4, parse_mode="HTML") == [text]


def test_html_no_dangling_open_tag_at_chunk_end() -> None:
    text = "aaaa bbbb <b>cccc</b>"
    assert split_text(text, 9, parse_mode="HTML") == ["aaaa bbbb", "<b>cccc</b>"]


def test_markdown_avoids_cutting_inside_spans() -> None:
    text = "aa *bold x* text here and more"
    assert split_text(text, 9, parse_mode="MarkdownV2") == [
        "aa",
        "*bold x*",
        "text here",
        "and more",
    ]
    code = "intro ```\nline one\nline two\n``` outro"
    chunks = split_text(code, 30, parse_mode="Markdown")
    assert "```\nline one\nline two\n```" in chunks


def test_markdown_long_span_falls_back_to_hard_split() -> None:
    text = "*" + "b" * 30 + "*"
    chunks = split_text(text, 10, parse_mode="MarkdownV2")
    assert "".join(chunks) == text
    assert all(utf16_len(c) <= 10 for c in chunks)


def test_markdown_escapes_stay_with_their_character() -> None:
    chunks = split_text("abcd\\*efgh", 5, parse_mode="MarkdownV2")
    assert chunks == ["abcd", "\\*efg", "h"]


alphabet = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from(["😀", "𝄞", "\n", " ", "\n\n", ". ", "\u0301", "\u200d", "\ufe0f", "é"]),
)
texts = st.lists(alphabet, max_size=400).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=texts, limit=st.integers(min_value=2, max_value=80))
def test_property_plain(text: str, limit: int) -> None:
    chunks = split_text(text, limit)
    for chunk in chunks:
        assert 0 < utf16_len(chunk) <= limit
        assert chunk.strip()
    assert squash("".join(chunks)) == squash(text)
    if text.strip() and utf16_len(text) <= limit:
        assert chunks == [text]


@settings(max_examples=200, deadline=None)
@given(text=texts, limit=st.integers(min_value=2, max_value=80))
def test_property_markdown(text: str, limit: int) -> None:
    chunks = split_text(text, limit, parse_mode="MarkdownV2")
    assert all(0 < utf16_len(c) <= limit for c in chunks)
    assert squash("".join(chunks)) == squash(text)


html_piece = st.one_of(
    texts.map(html.escape),
    st.tuples(st.sampled_from(["b", "i", "u", "s", "code"]), texts.map(html.escape)).map(
        lambda t: f"<{t[0]}>{t[1]}</{t[0]}>"
    ),
    texts.map(lambda s: f'<a href="https://e.x/?q=1&amp;r=2">{html.escape(s)}</a>'),
    st.tuples(texts.map(html.escape), texts.map(html.escape)).map(
        lambda t: f"<b>{t[0]}<i>{t[1]}</i></b>"
    ),
)


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(html_piece, max_size=6), limit=st.integers(min_value=2, max_value=80))
def test_property_html(pieces: list[str], limit: int) -> None:
    text = "".join(pieces)
    chunks = split_text(text, limit, parse_mode="HTML")
    for chunk in chunks:
        assert_balanced(chunk)
        assert 0 < utf16_len(visible(chunk)) <= limit
        assert visible(chunk).strip()
    assert squash("".join(visible(c) for c in chunks)) == squash(visible(text))
