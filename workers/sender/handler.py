"""The sender: outbound stream → Telegram Bot API, rate-limited, each entry with its bot.

Each entry goes out with the bot it names (``OutboundEntry.bot_id``): its client, its
limiter, its 401 state (``workers.sender.bots``); a bot the registry does not know is a
dead letter ``unknown_bot``.

One entry is one or more parts (``parts.plan_parts``), each sent once, in order
(``sending.PartSender``; a part to retry after a backoff ends the try with ``Retry``,
and the lane runs the entry again, resuming at that part: ``parts.Resume``), then one
outcome for the consumer's fenced finish: the result
entry, and for a chat that blocked the bot its mark. Telegram errors are translated by
``gateway.telegram.answers`` (one table for every Bot API client) into: wait (429),
retry with backoff (5xx, HTML bodies, network), resend (migrate_to_chat_id, no
parse_mode), dead-letter with a reason code (403, 400s, 404, 409, 413: never retried);
a 401 is a dead letter ``bot_unauthorized`` (the bot's later entries too, with no call,
until it has a new token), but stops the role when the bot is ``TELEGRAM_BOT_TOKEN``'s and
the only one (a single-bot deployment, as before). A streamed reply's draft
(``sendMessageDraft``) goes its own best-effort way (``drafts.DraftSender``: sent at once
or dropped, no result), with its own bot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from pydantic import ValidationError

from gateway.core.contracts import EnvelopeError, Keys, OutboundEntry, Reason, result_fields
from gateway.core.drafts import DRAFT_METHOD
from gateway.core.logs import redact
from gateway.runtime.bots import MISS_REFRESH
from gateway.runtime.consumer import (
    Ack,
    Dead,
    Effect,
    Fence,
    Item,
    Marker,
    Outcome,
    Publish,
    Retry,
)
from gateway.runtime.routing import sent_marker
from gateway.telegram import answers
from workers.sender.bots import SenderBots
from workers.sender.drafts import DraftSender
from workers.sender.marks import BLOCKED_TTL, Marks
from workers.sender.observe import SenderMetrics
from workers.sender.parts import COUNTED, PAID_BROADCAST_METHODS, Resume, plan_parts
from workers.sender.rich import Replies, Target, acted_on, plan_by_reply
from workers.sender.sending import PartSender, unauthorized

log = logging.getLogger(__name__)

UNKNOWN_ONCE = "unknown bot, asked once"  # the memo of an entry whose bot was not found


@dataclass(slots=True)
class Tally:
    """What one entry's result entry will say, gathered while its parts are sent."""

    entry: OutboundEntry
    started: float  # when the sender took it (wall clock)
    token: str = field(default="", repr=False)  # its bot's: redacted from the result
    message_ids: list[int] = field(default_factory=list)
    attempts: int = 0


class Sender:
    """Handles one outbound entry: every part sent once, in order, then one result entry,
    written by the consumer's finish (with the ack, fenced by the partition's lease)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        bots: SenderBots,
        *,
        max_attempts: int = 0,
        backoff_max: float,
        name: str = "",
        default_ttl: float = 3600.0,
        observe: SenderMetrics | None = None,
        edit_window: int = 0,
    ) -> None:
        self.observe = counts = observe or SenderMetrics.off()
        self.name = name  # the consumer name, written into each result
        self.redis = redis
        self.keys = keys
        self.bots = bots
        self.marks = Marks(redis)
        self.replies = Replies(redis, keys, edit_window)  # edits and deletes by reply id
        self.parts = PartSender(
            redis,
            keys,
            bots,
            self.marks,
            max_attempts=max_attempts,
            backoff_max=backoff_max,
            default_ttl=default_ttl,
            observe=counts,
        )
        self.drafts = DraftSender(redis, keys, counts)
        self.sent = 0

    @property
    def flood_waits(self) -> int:
        return self.parts.flood_waits

    @property
    def fenced(self) -> int:
        """Sends not made because the lease was gone at the last moment."""
        return self.parts.fenced

    @property
    def unmarked(self) -> dict[str, str]:
        """Parts sent whose marker Redis has not taken yet (``Marks.unmarked``): the last
        part's until its entry's finish wrote it, any part whose write failed."""
        return self.marks.unmarked

    async def __call__(self, item: Item, fence: Fence) -> Outcome:
        try:
            entry = OutboundEntry.from_fields(item.fields)
        except (EnvelopeError, ValidationError) as exc:
            return Dead(Reason.INVALID_ENTRY, redact(str(exc)[:500]))
        obs = self.observe.for_bot(entry.bot_id)
        resume = item.memo if isinstance(item.memo, Resume) else None  # after a Retry
        tally = Tally(entry, resume.started if resume else time.time())
        if resume is not None:
            tally.attempts = resume.attempts
        bot = await self.bots.lookup(entry.bot_id)
        if entry.method == DRAFT_METHOD:  # best effort: shown now or dropped, no result
            return await self.drafts.send(entry, fence, bot)
        if bot is None and item.memo is not UNKNOWN_ONCE:
            # Asked once more after the registry's next read: a bot added a moment ago,
            # just after another miss had the registry read its sources, is not lost.
            why = f"bot {entry.bot_id} unknown: asked again after the registry's next read"
            return Retry(MISS_REFRESH, why, UNKNOWN_ONCE)
        if bot is None:
            obs.send(entry.method, "dead_lettered")
            why = (
                f"bot {entry.bot_id} is not a bot of this deployment (not TELEGRAM_BOT_TOKEN's, "
                "BOTS_FILE's or in the registry of tg-gateway bots)"
            )
            return self._dead(tally, answers.Dead(Reason.UNKNOWN_BOT, None, why))
        tally.token = bot.token
        best_effort = entry.method not in COUNTED
        chat_id = entry.chat_id
        expired = entry.deadline is not None and time.time() > entry.deadline
        if best_effort and expired:  # a stale typing/callback answer is harmless
            return self._ack(tally, True, description="skipped: expired", reason=Reason.EXPIRED)
        if bot.unauthorized:  # its token got a 401: no call until it has a new one
            obs.send(entry.method, "dead_lettered")
            if best_effort:
                return self._drop(tally, chat_id, unauthorized(bot), ())
            return self._dead(tally, unauthorized(bot))
        # One round trip (the chat's partition's slot): the chat's blocked-chat mark (not
        # for best-effort calls; unknown, its node away, counts as not blocked), its
        # migration (only groups migrate) and the first part's sent marker.
        look = await self.marks.first_look(
            sent_marker(self.keys, entry, 0),
            None if best_effort else self.keys.blocked_chat(entry.bot_id, chat_id),
            self.keys.migrated(entry.bot_id, chat_id)
            if isinstance(chat_id, int) and chat_id < 0
            else None,
        )
        if look.blocked:
            obs.send(entry.method, "dead_lettered")  # given up before any call
            return self._dead(tally, answers.Dead(Reason.BOT_BLOCKED, 403, "chat blocked the bot"))
        if expired:
            obs.send(entry.method, "dead_lettered")
            return self._dead(tally, answers.Dead(Reason.EXPIRED, None, "deadline passed"))
        if look.moved is not None:  # unknown: Telegram's 400 migrate_to_chat_id tells again
            chat_id = int(look.moved)
        target: Target | None = None
        if self.replies.by_reply(entry):  # an edit or delete of an earlier reply
            found = await self.replies.target(entry)
            if isinstance(found, answers.Dead):
                obs.send(entry.method, "dead_lettered")
                return self._dead(tally, found)
            target, chat_id = found, found.chat_id
        parts = plan_parts(entry) if target is None else plan_by_reply(entry, target)
        writes: list[Effect] = []  # the last part's marker and the record: in the finish
        for index, (method, payload) in enumerate(parts):
            if bot.paid_broadcast and method in PAID_BROADCAST_METHODS:
                payload = {**payload, "allow_paid_broadcast": True}
            marker = sent_marker(self.keys, entry, index)
            if index == 0 and look.sent_read:
                done: bytes | str | None = look.sent
            else:
                done = await self.marks.sent_value(marker)
            if done is None:
                state = resume.part if resume is not None and resume.index == index else None
                outcome = await self.parts.send(
                    entry, bot, method, payload, chat_id, marker, fence, state
                )
                if outcome.retry is not None and outcome.state is not None:
                    # A 5xx or network error: the lane tries the entry again after the
                    # backoff (the chat waits); the parts sent have their markers.
                    memo = Resume(index, outcome.state, tally.started, tally.attempts)
                    why = f"part {index} to be sent again"
                    return Retry(outcome.retry, why, memo, release=outcome.release)
                tally.attempts += outcome.attempts
                if outcome.dead is not None:
                    mark = self._blocked_mark(entry, outcome.chat_id, outcome.dead)
                    obs.send(method, "dead_lettered")
                    if best_effort and outcome.dead.reason is not Reason.UNSUPPORTED:
                        # Nothing for an operator to act on: drop it, say so, no dead letter.
                        return self._drop(tally, chat_id, outcome.dead, mark)
                    return self._dead(tally, outcome.dead, mark)
                done = outcome.already
            if done is not None:  # sent before (a crash, a redelivery, another owner)
                obs.send(method, "already_sent")
                if done.isdigit():
                    tally.message_ids.append(int(done))
                continue
            chat_id = outcome.chat_id
            mid = (
                outcome.message_id if outcome.message_id is not None else acted_on(method, payload)
            )
            obs.send(method, "sent")
            if len(parts) > 1:
                self.observe.split_parts.inc()
            value = str(mid) if mid is not None else "1"
            if index == len(parts) - 1:  # nothing is sent after it: in the finish's trip
                writes.append(self.marks.deferred(marker, value))
            else:
                await self.marks.mark_sent(marker, value)
            if mid is not None:
                tally.message_ids.append(mid)
        record = self.replies.record(entry, chat_id, tally.message_ids, target)
        if record is not None:
            writes.append(record)
        self.sent += 1
        latency = obs.queue_latency.get(entry.method)
        now = time.time()
        if latency is not None:
            latency.observe(max(0.0, now - entry.enqueued_at))
        if entry.received_at is not None:  # a reply to an update (not a CRM's own message)
            obs.end_to_end.observe(max(0.0, now - entry.received_at))
        tally.attempts = max(tally.attempts, 1)
        return self._ack(tally, True, effects=tuple(writes))

    def _blocked_mark(
        self, entry: OutboundEntry, chat_id: int | str, dead: answers.Dead
    ) -> tuple[Effect, ...]:
        """A 403 (the chat blocked or kicked the bot) marks the chat, so its next entries
        go to the dead letters without a request: a ``Marker`` of the outcome, written by
        the fenced finish. Only a cache (``cache=True``): it never holds the entry."""
        if dead.reason is not Reason.BOT_BLOCKED:
            return ()
        return (Marker(self.keys.blocked_chat(entry.bot_id, chat_id), BLOCKED_TTL, cache=True),)

    def _drop(
        self,
        tally: Tally,
        chat_id: int | str,
        dead: answers.Dead,
        effects: tuple[Effect, ...],
    ) -> Ack:
        entry = tally.entry
        why = f"{dead.reason.value}: {dead.description}"
        log.info("%s to chat %s dropped: %s", entry.method, chat_id, why)
        return self._ack(tally, False, dead.code, f"dropped: {why}", effects, dead.reason)

    def _dead(self, tally: Tally, dead: answers.Dead, effects: tuple[Effect, ...] = ()) -> Dead:
        """Dead: the failed result goes with the dead letter and the ack (one finish)."""
        description = f"{dead.reason.value}: {dead.description}"
        result = self._result(tally, False, dead.code, description, dead.reason)
        error = f"{dead.code or ''} {dead.description}".strip()
        return Dead(dead.reason, error, (Publish(self.keys.results, result), *effects))

    def _ack(
        self,
        tally: Tally,
        ok: bool,
        error_code: int | None = None,
        description: str = "",
        effects: tuple[Effect, ...] = (),
        reason: Reason | None = None,
    ) -> Ack:
        """Finished: the result entry is written by the consumer's finish script, with the
        ack and fenced by the lease, so a sender that lost its partition writes none."""
        result = self._result(tally, ok, error_code, description, reason)
        return Ack((Publish(self.keys.results, result), *effects))

    def _result(
        self,
        tally: Tally,
        ok: bool,
        error_code: int | None,
        description: str,
        reason: Reason | None = None,
    ) -> dict[str, str]:
        entry, now = tally.entry, time.time()
        return result_fields(  # a failed (or dropped) entry's result lists no message ids
            reply_id=entry.reply_id,
            chat_id=entry.chat_id,
            method=entry.method,
            ok=ok,
            message_ids=tally.message_ids if ok else [],
            attempts=tally.attempts,
            queue_latency_ms=max(0.0, (tally.started - entry.enqueued_at) * 1000),
            send_latency_ms=(now - tally.started) * 1000,
            error_code=error_code,
            description=redact(description, (tally.token,)),
            update_id=entry.update_id,
            sender=self.name,
            reason=reason,  # the receipt's status and code (gateway.core.receipts)
            status_url=entry.status_url,
            bot_id=entry.bot_id,
        )
