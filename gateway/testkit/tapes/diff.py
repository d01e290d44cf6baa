"""Comparing the answers of two tapes, per chat and per inbound message (pure).

Each tape becomes conversations: per chat, its inbound updates in order, each with the
replies (``send`` events) that answer it. Chats pair by id when both tapes have the same
ones, else by order of first appearance (two tapes redacted with different keys); inbound
messages pair by position in their chat. Replies compare on method, text (or caption),
buttons, attachments and any other parameter, minus volatile fields (``DEFAULT_IGNORE``
plus ``--ignore``). Latency per tape: each reply's result time minus its update's time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.testkit.tapes.tape import Event, Tape, TapeError, read_tape, write_tape

DEFAULT_IGNORE = frozenset(
    {"message_id", "message_ids", "reply_to_message_id", "reply_parameters", "date",
     "file_id", "file_unique_id", "reply_id"}
)  # fmt: skip
MEDIA_FIELDS = ("photo", "document", "video", "audio", "animation", "voice", "sticker")


def _strip(node: Any, ignore: frozenset[str]) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v, ignore) for k, v in sorted(node.items()) if k not in ignore}
    if isinstance(node, list):
        return [_strip(v, ignore) for v in node]
    return node


def reply_view(send: Event, ignore: frozenset[str] = DEFAULT_IGNORE) -> dict[str, Any]:
    """What a reply is, for comparison: method, text, buttons, attachments, the rest."""
    payload = dict(send.get("payload") or {})
    text = payload.pop("text", None)
    caption = payload.pop("caption", None)
    buttons = payload.pop("reply_markup", None)
    attachments = {}
    for name in MEDIA_FIELDS:
        if name in payload:
            value = payload.pop(name)
            # A file id or upload reference is volatile; a URL is what the bot chose.
            keep = isinstance(value, str) and value.startswith(("http://", "https://"))
            attachments[name] = value if keep and "file_id" not in ignore else "<file>"
    return {
        "method": "" if "method" in ignore else send.get("method", ""),
        "text": None if {"text", "caption"} & ignore else (text if text is not None else caption),
        "buttons": None if "reply_markup" in ignore else _strip(buttons, ignore),
        "attachments": attachments,
        "other": _strip(payload, ignore),
    }


@dataclass(slots=True)
class Inbound:
    update: Event
    replies: list[Event] = field(default_factory=list)

    @property
    def label(self) -> str:
        body: Any = next((v for k, v in self.update["update"].items() if k != "update_id"), {})
        text = ""
        if isinstance(body, dict):
            text = str(body.get("text") or body.get("caption") or body.get("data") or "")
        snippet = f" {text[:40]!r}" if text else ""
        return f"update {self.update['update_id']}{snippet}"


@dataclass(slots=True)
class Chat:
    chat_id: Any
    inbound: list[Inbound] = field(default_factory=list)
    unprompted: list[Event] = field(default_factory=list)


def conversations(tape: Tape) -> list[Chat]:
    """Chats in order of first appearance, each with its inbound messages and replies."""
    chats: dict[Any, Chat] = {}
    by_update: dict[int, Inbound] = {}
    for e in sorted(tape.events, key=lambda e: e["at"]):
        if e["type"] == "update":
            chat = chats.setdefault(e["chat_id"], Chat(e["chat_id"]))
            inbound = Inbound(e)
            chat.inbound.append(inbound)
            by_update[e["update_id"]] = inbound
    for e in sorted(tape.events, key=lambda e: e["at"]):
        if e["type"] != "send":
            continue
        answered = by_update.get(e.get("update_id"))  # type: ignore[arg-type]
        if answered is not None:
            answered.replies.append(e)
        else:
            chats.setdefault(e["chat_id"], Chat(e["chat_id"])).unprompted.append(e)
    return list(chats.values())


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p95/p99 (None without values)."""
    data = sorted(values)
    out: dict[str, float | None] = {}
    for p in (50, 95, 99):
        out[f"p{p}"] = data[max(0, math.ceil(p / 100 * len(data)) - 1)] if data else None
    return out


def reply_latencies_ms(tape: Tape) -> list[float]:
    """Per result that answers an update on the tape: result time minus update time."""
    received = {e["update_id"]: e["at"] for e in tape.events if e["type"] == "update"}
    return [
        (e["at"] - received[e["update_id"]]) * 1000
        for e in tape.events
        if e["type"] == "result" and e.get("update_id") in received
    ]


@dataclass(frozen=True, slots=True)
class Finding:
    chat: str
    where: str
    kind: str  # missing, extra, changed, order, missing-message, extra-message
    detail: str

    def line(self) -> str:
        return f"  {self.kind:<15} {self.where}: {self.detail}"


@dataclass(slots=True)
class DiffReport:
    findings: list[Finding]
    latency: dict[str, dict[str, float | None]]
    paired_by: str
    messages: int

    @property
    def same(self) -> bool:
        return not self.findings


def _short(view: dict[str, Any]) -> str:
    text = view["text"]
    shown = f" {text[:60]!r}" if isinstance(text, str) else ""
    return f"{view['method']}{shown}"


def _compare_replies(
    chat: str, where: str, base: list[Event], run: list[Event], ignore: frozenset[str]
) -> list[Finding]:
    bv = [reply_view(e, ignore) for e in base]
    rv = [reply_view(e, ignore) for e in run]
    if bv == rv:
        return []
    key = repr
    if len(bv) == len(rv) and sorted(map(key, bv)) == sorted(map(key, rv)):
        return [Finding(chat, where, "order", "the same replies in another order")]
    out: list[Finding] = []
    for i, (b, r) in enumerate(zip(bv, rv, strict=False), 1):
        if b == r:
            continue
        parts = [f"{k} {b[k]!r} -> {r[k]!r}" for k in b if b[k] != r[k]]
        out.append(Finding(chat, f"{where} reply {i}", "changed", "; ".join(parts)))
    for i, b in enumerate(bv[len(rv) :], len(rv) + 1):
        out.append(Finding(chat, f"{where} reply {i}", "missing", _short(b)))
    for i, r in enumerate(rv[len(bv) :], len(bv) + 1):
        out.append(Finding(chat, f"{where} reply {i}", "extra", _short(r)))
    return out


def diff_tapes(
    base: Tape, run: Tape, ignore: Iterable[str] = (), bots: tuple[str, str] | None = None
) -> DiffReport:
    """Every difference in the answers of ``run`` against ``base``: tapes of one bot, or
    of the two ``bots`` names (``--bot BASE_BOT=RUN_BOT``: each an id or header name)."""
    bh, rh = base.header, run.header
    if bots is not None:
        for side, header, want in (("base", bh, bots[0]), ("run", rh, bots[1])):
            if want not in (str(header.bot_id), header.bot_name):
                raise TapeError(f"--bot {bots[0]}={bots[1]}: {side} is a tape of bot {header.bot}")
    elif bh.bot_id != rh.bot_id:
        raise TapeError(
            f"tapes of two bots: base is bot {bh.bot}, run is bot {rh.bot} (compare them "
            f"anyway with --bot {bh.bot_name or bh.bot_id}={rh.bot_name or rh.bot_id})"
        )
    drop = DEFAULT_IGNORE | frozenset(ignore)
    bc, rc = conversations(base), conversations(run)
    by_id = {c.chat_id for c in bc} == {c.chat_id for c in rc}
    if by_id:
        run_of = {c.chat_id: c for c in rc}
        pairs = [(c, run_of[c.chat_id]) for c in bc]
        extra_chats: list[Chat] = []
    else:
        pairs = list(zip(bc, rc, strict=False))
        extra_chats = rc[len(bc) :]
    findings: list[Finding] = []
    messages = 0
    for b, r in pairs:
        name = f"chat {b.chat_id}" if by_id else f"chat #{bc.index(b) + 1} ({b.chat_id})"
        for i, bi in enumerate(b.inbound):
            messages += 1
            where = f"{name} message {i + 1} ({bi.label})"
            if i >= len(r.inbound):
                findings.append(Finding(name, where, "missing-message", "not on the run tape"))
                continue
            findings += _compare_replies(name, where, bi.replies, r.inbound[i].replies, drop)
        for j, ri in enumerate(r.inbound[len(b.inbound) :], len(b.inbound) + 1):
            findings.append(
                Finding(name, f"{name} message {j} ({ri.label})", "extra-message", "not on base")
            )
        findings += _compare_replies(name, f"{name} unprompted", b.unprompted, r.unprompted, drop)
    for b in bc[len(rc) :] if not by_id else []:
        findings.append(
            Finding(
                str(b.chat_id), f"chat {b.chat_id}", "missing-message", "chat not on the run tape"
            )
        )
    for r in extra_chats:
        findings.append(
            Finding(str(r.chat_id), f"chat {r.chat_id}", "extra-message", "chat not on base")
        )
    return DiffReport(
        findings=findings,
        latency={
            "base": percentiles(reply_latencies_ms(base)),
            "run": percentiles(reply_latencies_ms(run)),
        },
        paired_by="id" if by_id else "order of first appearance",
        messages=messages,
    )


def render(report: DiffReport, base_name: str, run_name: str) -> str:
    """The terminal report: findings grouped by chat, then latency side by side."""
    lines = []
    if report.same:
        lines.append(f"same answers: {report.messages} inbound message(s) compared")
    else:
        lines.append(
            f"{len(report.findings)} difference(s) in {report.messages} inbound message(s)"
        )
        chat = None
        for f in report.findings:
            if f.chat != chat:
                chat = f.chat
                lines.append(chat)
            lines.append(f.line())
    if report.paired_by != "id":
        lines.append(f"(chats paired by {report.paired_by}: the tapes' chat ids differ)")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines.append(f"{'latency ms':<12}{'base':>12}{'run':>12}")
    for p in ("p50", "p95", "p99"):
        lines.append(
            f"{p:<12}{ms(report.latency['base'][p]):>12}{ms(report.latency['run'][p]):>12}"
        )
    lines.append(f"base: {base_name}  run: {run_name}")
    return "\n".join(lines)


ReportWriter = Callable[[DiffReport, dict[str, list[float]]], str]


def run_diff(
    base_path: str,
    run_path: str,
    ignore: Iterable[str] = (),
    update: bool = False,
    report: ReportWriter | None = None,
    bots: tuple[str, str] | None = None,
) -> int:
    """``tg-gateway diff``: print the report (and hand it with each tape's latencies to
    ``report``, ``--report``'s writer, which says what it wrote); 0 same (or BASE
    rewritten), 1 differ. A bad tape raises ``TapeError`` (exit 2) before anything is
    printed or rewritten."""
    base, run = read_tape(base_path), read_tape(run_path)
    found = diff_tapes(base, run, ignore, bots)
    print(render(found, base_path, run_path))
    if report is not None:
        print(report(found, {"base": reply_latencies_ms(base), "run": reply_latencies_ms(run)}))
    if update and not found.same:
        write_tape(base_path, run.header, run.events)
        print(f"rewrote {base_path} with {run_path}'s events")
        return 0
    return 0 if found.same else 1
