"""Split long texts into Telegram-sized chunks (pure): lengths in UTF-16 code units,
cuts at paragraph > line > sentence > word boundaries, HTML/Markdown aware."""

from __future__ import annotations

import html
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024

_ZWJ = "\u200d"
# Separators by preference; the cut is at the match start (paragraph, line, word)
# or at the match end (sentence: right after the punctuation, before the space).
_PARAGRAPH = re.compile(r"\r?\n(?=[^\S\n]*\n)")
_LINE = re.compile(r"\r?\n")
_SENTENCE = re.compile(r"[.!?\u2026]+[\"'\u00bb\u201d\u2019)\]]*(?=\s)")
_WORD = re.compile(r"\s")
_LEVELS: tuple[tuple[re.Pattern[str], bool], ...] = (
    (_PARAGRAPH, False),
    (_LINE, False),
    (_SENTENCE, True),
    (_WORD, False),
)
_HTML_TOKEN = re.compile(
    r"<(/?)([a-zA-Z][\w-]*)((?:[^<>\"']|\"[^\"]*\"|'[^']*')*)>"
    r"|&(?:[a-zA-Z][a-zA-Z0-9]*|#[0-9]+|#[xX][0-9a-fA-F]+);"
)
_VOID_TAGS = frozenset({"br", "hr", "img", "wbr"})


def utf16_len(s: str) -> int:
    """Length of ``s`` as Telegram counts it: UTF-16 code units."""
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


def _units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def _extends(ch: str) -> bool:
    """True if ``ch`` belongs to the grapheme cluster of the character before it."""
    cp = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Mc", "Me")
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0xE0100 <= cp <= 0xE01EF
        or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # emoji tag sequences
        or ch == _ZWJ
    )


def _grapheme_boundaries(s: str) -> list[bool]:
    """``ok[i]`` is True when cutting before ``s[i]`` does not split a grapheme cluster
    (approximation: combining marks, variation selectors, ZWJ sequences, skin tones,
    flags and CRLF stay together)."""
    n = len(s)
    ok = [True] * (n + 1)
    regional = 0  # regional indicators in a row so far
    for i in range(n):
        ch = s[i]
        is_ri = 0x1F1E6 <= ord(ch) <= 0x1F1FF
        if i > 0 and (
            _extends(ch)
            or s[i - 1] == _ZWJ
            or (s[i - 1] == "\r" and ch == "\n")
            or (is_ri and regional % 2 == 1)
        ):
            ok[i] = False
        regional = regional + 1 if is_ri else 0
    return ok


def _choose_cut(v: str, pos: int, end: int, preferred: list[list[bool]]) -> int:
    """Where to cut ``v[pos:]`` so that ``v[pos:cut]`` fits (``cut <= end``)."""
    n = len(v)
    fnw = pos
    while fnw < end and v[fnw].isspace():
        fnw += 1
    ext = end
    while ext < n and v[ext].isspace():
        ext += 1
    ext = min(n, ext + 1)
    ok = preferred[0]
    for pattern, at_end in _LEVELS:
        best = -1
        for m in pattern.finditer(v, pos, ext):
            c = m.end() if at_end else m.start()
            if c > end:
                break
            if c > fnw and ok[c]:
                best = c
        if best != -1:
            return best
    for oks in preferred:  # hard split, strictest rule that finds a place first
        for c in range(end, fnw, -1):
            if oks[c]:
                return c
    for c in range(end, pos, -1):
        if preferred[-1][c]:
            return c
    return end


def _plan(v: str, limit: int, preferred: list[list[bool]]) -> list[tuple[int, int]]:
    """Chunk ranges of ``v`` (separator whitespace at each cut left out)."""
    n = len(v)
    cum = [0] * (n + 1)
    for i, ch in enumerate(v):
        cum[i + 1] = cum[i] + _units(ch)
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < n:
        end = bisect_right(cum, cum[pos] + limit, pos) - 1
        if end >= n:
            out.append((pos, n))
            break
        cut = _choose_cut(v, pos, end, preferred)
        content_end = cut
        while content_end > pos and v[content_end - 1].isspace():
            content_end -= 1
        if content_end > pos:
            out.append((pos, content_end))
        pos = cut
        while pos < n and v[pos].isspace():
            pos += 1
    return out


def _markdown_protected(s: str, v2: bool) -> list[bool]:
    """``ok[i]`` is False inside a Markdown entity span or right after an escape."""
    n = len(s)
    ok = [True] * (n + 1)
    delims = ("```", "`", "||", "__", "*", "_", "~") if v2 else ("```", "`", "*", "_")
    exhausted: set[str] = set()

    def find(d: str, j: int) -> int:
        if d in exhausted:
            return -1
        while j < n:
            if s[j] == "\\":
                j += 2
            elif s.startswith(d, j):
                return j
            else:
                j += 1
        exhausted.add(d)
        return -1

    def protect(a: int, b: int) -> None:
        for k in range(a + 1, b):
            ok[k] = False

    i = 0
    while i < n:
        if s[i] == "\\":
            ok[min(i + 1, n)] = False
            i += 2
            continue
        if s[i] == "[":
            j = find("](", i + 1)
            k = s.find(")", j + 2) if j != -1 else -1
            if k != -1:
                protect(i, k + 1)
                i = k + 1
                continue
            exhausted.add("](")
        for d in delims:
            if s.startswith(d, i):
                j = find(d, i + len(d))
                if j != -1:
                    protect(i, j + len(d))
                    i = j + len(d)
                else:
                    i += len(d)
                break
        else:
            i += 1
    return ok


@dataclass(frozen=True, slots=True)
class _Atom:
    raw: str
    visible: str  # "" for tags
    tag: str | None = None  # lower-case tag name for tags
    closing: bool = False
    void: bool = False


def _html_atoms(text: str) -> list[_Atom]:
    atoms: list[_Atom] = []
    last = 0
    for m in _HTML_TOKEN.finditer(text):
        atoms.extend(_Atom(ch, ch) for ch in text[last : m.start()])
        raw = m.group(0)
        if m.group(2) is None:
            atoms.append(_Atom(raw, html.unescape(raw)))
        else:
            name = m.group(2).lower()
            void = name in _VOID_TAGS or m.group(3).rstrip().endswith("/")
            atoms.append(_Atom(raw, "", name, bool(m.group(1)), void))
        last = m.end()
    atoms.extend(_Atom(ch, ch) for ch in text[last:])
    return atoms


def _apply(stack: list[_Atom], atom: _Atom) -> None:
    if atom.tag is None or atom.void:
        return
    if not atom.closing:
        stack.append(atom)
        return
    for k in range(len(stack) - 1, -1, -1):
        if stack[k].tag == atom.tag:
            del stack[k:]
            return


def _split_html(text: str, limit: int) -> list[str]:
    atoms = _html_atoms(text)
    visible = "".join(a.visible for a in atoms)
    if not visible.strip():
        return []
    if utf16_len(visible) <= limit:
        return [text]
    atom_at: list[int] = []  # visible position -> atom index
    atom_ok = [False] * (len(visible) + 1)
    atom_ok[-1] = True
    for idx, atom in enumerate(atoms):
        if atom.visible:
            atom_ok[len(atom_at)] = True
            atom_at.extend([idx] * len(atom.visible))
    grapheme = _grapheme_boundaries(visible)
    strict = [a and g for a, g in zip(atom_ok, grapheme, strict=True)]
    ranges = _plan(visible, limit, [strict, atom_ok])
    chunks: list[str] = []
    stack: list[_Atom] = []
    first = 0
    for n, (vstart, vend) in enumerate(ranges):
        last = n == len(ranges) - 1
        stop = len(atoms) if last else atom_at[ranges[n + 1][0]]
        content = range(atom_at[vstart], atom_at[vend - 1] + 1)
        parts = [a.raw for a in stack]  # reopen what the previous chunk left open
        dangling = 0  # opening tags at the very end, with nothing after them yet
        for k in range(first, stop):
            atom = atoms[k]
            if atom.tag is None and k not in content:
                continue  # separator whitespace at a cut
            parts.append(atom.raw)
            _apply(stack, atom)
            opening = atom.tag is not None and not atom.closing and not atom.void
            dangling = dangling + 1 if opening else 0
        first = stop
        if not last and dangling:  # they open in the next chunk instead
            del parts[-dangling:]
        keep = len(stack) - (dangling if not last else 0)
        parts.extend(f"</{a.tag}>" for a in reversed(stack[:keep]))
        chunks.append("".join(parts))
    return chunks


def split_text(text: str, limit: int = TEXT_LIMIT, parse_mode: str | None = None) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` UTF-16 code units each.

    Cuts prefer a blank line, then a line break, a sentence end, whitespace, and only
    then a hard cut (never inside a code point, and not inside a grapheme cluster while
    a cluster fits). The whitespace at a cut is dropped; everything else is kept, in order.
    Fitting text comes back unchanged as ``[text]``; blank text gives ``[]``.

    ``parse_mode="HTML"``: the visible text (tags stripped, entities decoded) is measured;
    cuts never fall inside a tag or an entity, and formatting open at a cut is closed at
    the end of the chunk and reopened (same attributes) at the start of the next one.

    ``"MarkdownV2"``/``"Markdown"``: the raw text is measured (never less than what
    Telegram counts) and cuts avoid entity spans (``*..*``, ``_.._``, `` `..` ``,
    ```` ```..``` ````, ``[..](..)``, and ``__``, ``~``, ``||`` in V2) and escapes. A span
    longer than ``limit`` is hard-split; such chunks are unbalanced and Telegram may
    reject them, so send those as plain text.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2 UTF-16 code units")
    mode = (parse_mode or "").lower()
    if mode == "html":
        return _split_html(text, limit)
    if mode not in ("", "markdown", "markdownv2"):
        raise ValueError(f"unsupported parse_mode {parse_mode!r}")
    if not text.strip():
        return []
    if utf16_len(text) <= limit:
        return [text]
    grapheme = _grapheme_boundaries(text)
    code_points = [True] * (len(text) + 1)
    if mode:
        spans = _markdown_protected(text, v2=mode == "markdownv2")
        preferred = [[a and b for a, b in zip(spans, grapheme, strict=True)], grapheme]
    else:
        preferred = [grapheme]
    preferred.append(code_points)
    return [text[a:b] for a, b in _plan(text, limit, preferred)]
