"""End-to-end latency of each reply, split into shares (pure: timestamps in, seconds out).

For one reply (a ``{prefix}:results`` entry of a load update), all epoch seconds:

- ``t_in``: the load tool began the update's webhook POST;
- ``t_out``: the emulator took the reply's Bot API call (``/_emu/sent`` ``ts``, or the
  callback answer's ``ts``);
- **total** = ``t_out - t_in``;
- **pipeline**: the reference pipeline's ``answered_at - received_at`` for the update's
  request (``/_ref/timings``, by ``Idempotency-Key``); 0 for replies the gateway makes
  itself (commands, the callback answer) and when the pipeline is embedded;
- **limiter**: the reply's time in the sender before its call: from the sender taking the
  entry (the result's ``at - send_latency_ms``) to ``t_out`` (the rate limiter's waits,
  with the sender's one limiter and one fence round trip and the request), plus the time
  its entry waited in the outbound stream while the chat's previous reply was still in
  the sender (its lane was waiting);
- **own** = total - pipeline - limiter: ingress, streams, worker, the sender's read.

The pipeline's interval lies before the outbound entry exists and the limiter's after,
so the shares do not overlap: ``own`` is negative only by the processes' clock noise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PIPELINE_KEY = re.compile(r"tg-\d+-(\d+)")
INDICATORS = frozenset({"sendChatAction"})  # "typing...": shown while waiting, not an answer


def answer(result: Mapping[str, str]) -> bool:
    """A result of a load update's answer (not of a typing indicator, not external)."""
    return result.get("method") not in INDICATORS and (result.get("update_id") or "").isdigit()


@dataclass(frozen=True, slots=True)
class Inbound:
    """A load update as sent: when its POST began, its chat, kind and callback query id."""

    t_in: float
    chat_id: int
    kind: str
    query_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """One answered Bot API call of a load update, its latency in seconds by share."""

    update_id: int
    method: str
    t_in: float
    total: float
    pipeline: float
    limiter: float

    @property
    def own(self) -> float:
        return self.total - self.pipeline - self.limiter


@dataclass(frozen=True, slots=True)
class Calls:
    """The emulator's record of the bot's calls: message sends by (chat, message id),
    callback answers by query id, each its epoch time."""

    messages: Mapping[tuple[int, int], float]
    answers: Mapping[str, float]

    @classmethod
    def of(
        cls, sent: Iterable[Mapping[str, object]], answers: Iterable[Mapping[str, object]]
    ) -> Calls:
        msgs: dict[tuple[int, int], float] = {}
        for e in sent:
            message = e.get("message")
            mid = message.get("message_id") if isinstance(message, dict) else None
            chat = e.get("chat_id")
            if isinstance(mid, int) and isinstance(chat, int):
                msgs[(chat, mid)] = float(e["ts"])  # type: ignore[arg-type]
        got = {str(a["callback_query_id"]): float(a["ts"]) for a in answers if "ts" in a}  # type: ignore[arg-type]
        return cls(msgs, got)


def pipeline_times(timings: Iterable[Mapping[str, object]]) -> dict[int, float]:
    """update_id -> the pipeline's seconds on it (the last request of each key)."""
    out: dict[int, float] = {}
    for t in timings:
        m = PIPELINE_KEY.fullmatch(str(t.get("idempotency_key") or ""))
        if m:
            out[int(m.group(1))] = float(t["answered_at"]) - float(t["received_at"])  # type: ignore[arg-type]
    return out


def _f(fields: Mapping[str, str], name: str) -> float:
    try:
        return float(fields.get(name) or 0)
    except ValueError:
        return 0.0


def decompose(
    sent: Mapping[int, Inbound],
    results: Iterable[Mapping[str, str]],
    calls: Calls,
    pipeline: Mapping[int, float],
) -> tuple[list[Reply], int]:
    """The replies of ``sent`` updates found in ``results`` and the emulator's ``calls``,
    and how many ok results had no matching call."""
    mine: list[tuple[float, float, Mapping[str, str]]] = []  # (taken, enqueued, fields)
    for r in results:
        if r.get("ok") != "1" or not answer(r) or int(r["update_id"]) not in sent:
            continue
        taken = _f(r, "at") - _f(r, "send_latency_ms") / 1000
        mine.append((taken, taken - _f(r, "queue_latency_ms") / 1000, r))
    mine.sort(key=lambda x: x[0])
    busy_until: dict[str, float] = {}  # chat -> when its previous reply left the sender
    replies: list[Reply] = []
    unmatched = 0
    for taken, enqueued, r in mine:
        inbound = sent[int(r["update_id"])]
        chat = r.get("chat_id", "")
        blocked = max(0.0, min(taken, busy_until.get(chat, 0.0)) - enqueued)
        busy_until[chat] = max(busy_until.get(chat, 0.0), _f(r, "at"))
        t_out = _call_time(r, inbound, calls)
        if t_out is None:
            unmatched += 1
            continue
        own_reply = r.get("method") == "answerCallbackQuery"
        share = 0.0 if own_reply else pipeline.get(int(r["update_id"]), 0.0)
        limiter = max(0.0, t_out - taken) + blocked
        uid = int(r["update_id"])
        replies.append(Reply(uid, r.get("method", ""), inbound.t_in, t_out - inbound.t_in,
                             share, limiter))  # fmt: skip
    return replies, unmatched


def _call_time(r: Mapping[str, str], inbound: Inbound, calls: Calls) -> float | None:
    if r.get("method") == "answerCallbackQuery":
        return calls.answers.get(inbound.query_id or "")
    ids = r.get("message_ids", "[]").strip("[] ").split(",")
    first = ids[0].strip() if ids else ""
    return calls.messages.get((inbound.chat_id, int(first))) if first.isdigit() else None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
