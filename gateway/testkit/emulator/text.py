"""Message text rules: UTF-16 lengths, parse_mode parsing into entities, user-side entities."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

from gateway.core.errors import GatewayError

Entity = dict[str, Any]


class EntityParseError(GatewayError):
    """The text does not parse under its parse_mode; str() is Telegram's wording."""


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of every Telegram length and offset."""
    return len(text.encode("utf-16-le")) // 2


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


class _Builder:
    """Collects output text while tracking the UTF-16 offset of its end."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.offset = 0

    def add(self, piece: str) -> None:
        self.parts.append(piece)
        self.offset += utf16_len(piece)

    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class _Open:
    tag: str
    byte: int
    offset: int
    attrs: dict[str, str] = field(default_factory=dict)


def _entity(kind: str, start: int, end: int, **extra: Any) -> Entity | None:
    if end <= start:
        return None
    return {"offset": start, "length": end - start, "type": kind, **extra}


def _finish(out: _Builder, entities: list[Entity | None]) -> tuple[str, list[Entity]]:
    done = [e for e in entities if e is not None]
    done.sort(key=lambda e: (e["offset"], -e["length"]))
    return out.text(), done


# --- HTML ----------------------------------------------------------------------------------

_HTML_TAGS = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline",
    "ins": "underline", "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough",
    "a": "text_link", "code": "code", "pre": "pre", "tg-spoiler": "spoiler", "span": "spoiler",
    "blockquote": "blockquote", "tg-emoji": "custom_emoji",
}  # fmt: skip
_TAG_NAME = re.compile(r"[a-zA-Z0-9-]*")
_ATTR = re.compile(r"""([a-zA-Z0-9_-]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+)))?""")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_PLAIN_HTML = re.compile(r"[^<&]+")


def _html_entity(text: str, i: int) -> tuple[str, int] | None:
    end = text.find(";", i + 1, i + 12)
    if end < 0:
        return None
    name = text[i + 1 : end]
    if name in _NAMED:
        return _NAMED[name], end + 1
    if name.startswith("#"):
        digits, base = (name[2:], 16) if name[1:2] in ("x", "X") else (name[1:], 10)
        try:
            code = int(digits, base)
        except ValueError:
            return None
        if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
            return chr(code), end + 1
    return None


def _read_attrs(text: str, pos: int) -> tuple[dict[str, str], int]:
    """Attributes of a start tag and the index of its ``>`` (-1 when unclosed)."""
    attrs: dict[str, str] = {}
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return attrs, -1
        if text[pos] == ">":
            return attrs, pos
        match = _ATTR.match(text, pos)
        if match is None:
            return attrs, -1
        value = next((g for g in match.group(2, 3, 4) if g is not None), "")
        attrs[match.group(1).lower()] = html.unescape(value)
        pos = match.end()


def _close_html(top: _Open, end: int, stack: list[_Open]) -> Entity | None:
    kind = _HTML_TAGS[top.tag]
    extra: dict[str, Any] = {}
    if top.tag == "a":
        if not top.attrs.get("href"):
            return None
        extra["url"] = top.attrs["href"]
    elif top.tag == "code" and stack and stack[-1].tag == "pre":
        language = top.attrs.get("class", "")
        if language.startswith("language-"):
            stack[-1].attrs["language"] = language.removeprefix("language-")
            return None
    elif top.tag == "pre" and "language" in top.attrs:
        extra["language"] = top.attrs["language"]
    elif top.tag == "blockquote" and "expandable" in top.attrs:
        kind = "expandable_blockquote"
    elif top.tag == "tg-emoji":
        extra["custom_emoji_id"] = top.attrs.get("emoji-id", "")
    return _entity(kind, top.offset, end, **extra)


def parse_html(text: str) -> tuple[str, list[Entity]]:
    """Strip HTML markup into plain text and entities, failing like Telegram on bad markup."""
    out = _Builder()
    stack: list[_Open] = []
    entities: list[Entity | None] = []
    i = 0
    while i < len(text):
        plain = _PLAIN_HTML.match(text, i)
        if plain is not None:
            out.add(plain.group())
            i = plain.end()
            continue
        if text[i] == "&":
            hit = _html_entity(text, i)
            out.add(hit[0] if hit else "&")
            i = hit[1] if hit else i + 1
            continue
        begin = _byte_offset(text, i)
        if text.startswith("</", i):
            close = text.find(">", i)
            if close < 0:
                raise EntityParseError(f"Unclosed end tag at byte offset {begin}")
            name = text[i + 2 : close].strip().lower()
            if not stack:
                raise EntityParseError(f"Unexpected end tag at byte offset {begin}")
            top = stack.pop()
            if name != top.tag:
                raise EntityParseError(
                    f'Unmatched end tag at byte offset {begin}, expected "</{top.tag}>", '
                    f'found "</{name}>"'
                )
            entities.append(_close_html(top, out.offset, stack))
            i = close + 1
            continue
        name_match = _TAG_NAME.match(text, i + 1)
        name = name_match.group().lower() if name_match else ""
        if name not in _HTML_TAGS:
            raise EntityParseError(f'Unsupported start tag "{name}" at byte offset {begin}')
        attrs, close = _read_attrs(text, i + 1 + len(name))
        if close < 0:
            raise EntityParseError(f"Unclosed start tag at byte offset {begin}")
        if name == "span" and attrs.get("class") != "tg-spoiler":
            raise EntityParseError(
                f'Tag "span" must have class "tg-spoiler" at byte offset {begin}'
            )
        stack.append(_Open(name, begin, out.offset, attrs))
        i = close + 1
    if stack:
        raise EntityParseError(
            f"Can't find end of the entity starting at byte offset {stack[-1].byte}"
        )
    return _finish(out, entities)


# --- Markdown (legacy) ---------------------------------------------------------------------

_MD_KINDS = {"*": "bold", "_": "italic", "`": "code", "```": "pre", "[": "text_link"}
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]+\n")


def _pre_body(inner: str) -> tuple[str, dict[str, Any]]:
    lang = _LANGUAGE.match(inner)
    if lang is None:
        return inner, {}
    return inner[lang.end() :], {"language": lang.group()[:-1]}


def parse_markdown(text: str) -> tuple[str, list[Entity]]:
    """Legacy ``Markdown``: ``*bold* _italic_ `code` ```pre``` [text](url)``, no nesting."""
    out = _Builder()
    entities: list[Entity | None] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1 : i + 2] in ("_", "*", "`", "["):
            out.add(text[i + 1])
            i += 2
            continue
        if ch not in "_*`[":
            out.add(ch)
            i += 1
            continue
        begin = _byte_offset(text, i)
        marker = "```" if text.startswith("```", i) else ch
        end_marker = "]" if marker == "[" else marker
        close = text.find(end_marker, i + len(marker))
        if close < 0:
            raise EntityParseError(f"Can't find end of the entity starting at byte offset {begin}")
        inner, extra = text[i + len(marker) : close], dict[str, Any]()
        if marker == "```":
            inner, extra = _pre_body(inner)
        i = close + len(end_marker)
        if marker == "[":
            url_end = text.find(")", i) if text.startswith("(", i) else -1
            extra = {"url": text[i + 1 : url_end]} if url_end > 0 else {}
            i = url_end + 1 if url_end > 0 else i
        start = out.offset
        out.add(inner)
        if marker != "[" or extra.get("url"):
            entities.append(_entity(_MD_KINDS[marker], start, out.offset, **extra))
    return _finish(out, entities)


# --- MarkdownV2 ----------------------------------------------------------------------------

_V2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_V2_KINDS = {
    "*": "bold", "_": "italic", "__": "underline", "~": "strikethrough", "||": "spoiler",
    "`": "code", "```": "pre", "[": "text_link",
}  # fmt: skip
_TD_NAMES = {
    "bold": "Bold", "italic": "Italic", "underline": "Underline", "strikethrough": "Strikethrough",
    "spoiler": "Spoiler", "code": "Code", "pre": "Pre", "text_link": "TextUrl",
}  # fmt: skip


def _v2_marker(text: str, i: int) -> str:
    for marker in ("```", "__", "||"):
        if text.startswith(marker, i):
            return marker
    return text[i] if text[i] in "*_~`[" else ""


def _unclosed(top: _Open) -> EntityParseError:
    name = _TD_NAMES[_V2_KINDS[top.tag]]
    return EntityParseError(f"Can't find end of {name} entity at byte offset {top.byte}")


def _v2_link_end(text: str, i: int, top: _Open, out: _Builder) -> tuple[Entity | None, int]:
    """Close ``[text]`` at ``]`` (index ``i``) with an optional ``(url)``."""
    if not text.startswith("(", i + 1):
        return None, i + 1
    close = text.find(")", i + 2)
    if close < 0:
        raise EntityParseError(f"Can't find end of a url at byte offset {_byte_offset(text, i)}")
    url = re.sub(r"\\(.)", r"\1", text[i + 2 : close])
    return _entity("text_link", top.offset, out.offset, url=url), close + 1


def parse_markdown_v2(text: str) -> tuple[str, list[Entity]]:
    """``MarkdownV2`` with nesting; unescaped reserved characters fail as in Telegram."""
    out = _Builder()
    stack: list[_Open] = []
    entities: list[Entity | None] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and 0 < ord(text[i + 1]) <= 126:
            out.add(text[i + 1])
            i += 2
            continue
        top = stack[-1] if stack else None
        if top is not None and top.tag in ("`", "```"):
            if text.startswith(top.tag, i):
                entities.append(_entity(_V2_KINDS[top.tag], top.offset, out.offset, **top.attrs))
                stack.pop()
                i += len(top.tag)
            else:
                out.add(ch)
                i += 1
            continue
        marker = _v2_marker(text, i)
        if not marker:
            if ch == "]" and top is not None and top.tag == "[":
                entity, i = _v2_link_end(text, i, stack.pop(), out)
                entities.append(entity)
                continue
            if ch == ">" and (i == 0 or text[i - 1] == "\n"):
                i += 1
                continue
            if ch in _V2_RESERVED:
                raise EntityParseError(
                    f"Character '{ch}' is reserved and must be escaped with the preceding '\\'"
                )
            out.add(ch)
            i += 1
            continue
        if top is not None and top.tag == marker:
            entities.append(_entity(_V2_KINDS[marker], top.offset, out.offset))
            stack.pop()
            i += len(marker)
            continue
        if any(o.tag == marker for o in stack) and top is not None:
            raise _unclosed(top)
        opened = _Open(marker, _byte_offset(text, i), out.offset)
        i += len(marker)
        if marker == "```":
            lang = _LANGUAGE.match(text, i)
            if lang is not None:
                opened.attrs["language"] = lang.group()[:-1]
                i = lang.end()
        stack.append(opened)
    if stack:
        raise _unclosed(stack[-1])
    return _finish(out, entities)


def format_text(text: str, parse_mode: str | None) -> tuple[str, list[Entity]]:
    """Plain text and entities for ``parse_mode`` (None/empty = text as-is)."""
    mode = (parse_mode or "").lower()
    if not mode:
        return text, []
    if mode == "html":
        return parse_html(text)
    if mode == "markdownv2":
        return parse_markdown_v2(text)
    if mode == "markdown":
        return parse_markdown(text)
    raise ValueError(parse_mode)


# --- entities Telegram detects in what users type -----------------------------------------

_DETECT = (
    ("url", re.compile(r"https?://[^\s<>\"]+[^\s<>\".,:;!?)\]'\u2019]")),
    ("bot_command", re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?")),
    ("mention", re.compile(r"(?<![\w@])@[A-Za-z0-9_]{5,32}\b")),
    ("hashtag", re.compile(r"(?<![\w#])#\w+")),
)


def detect_entities(text: str) -> list[Entity]:
    """bot_command, url, mention and hashtag entities, UTF-16 offsets, as Telegram adds them."""
    found: list[tuple[int, int, str]] = []
    for kind, pattern in _DETECT:
        for match in pattern.finditer(text):
            start, end = match.start(), match.end()
            if any(s < end and start < e for s, e, _ in found):
                continue
            found.append((start, end, kind))
    found.sort()
    return [
        {"offset": utf16_len(text[:s]), "length": utf16_len(text[s:e]), "type": kind}
        for s, e, kind in found
    ]
