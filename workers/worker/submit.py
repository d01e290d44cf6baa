"""One POST of an update to its bot's pipeline, and what the pipeline's answer or
absence means for it: the reply body, a dead letter with the user's apology, or a
``Retry`` while the pipeline (or its breaker) keeps it away."""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.core.backoff import backoff
from gateway.core.contracts import Reason
from gateway.core.errors import PipelineRejected, PipelineUnavailable, ReplyShapeError
from gateway.runtime.consumer import Dead, LeaseLost, Outcome, Retry
from workers.worker.adapter import PipelineMessage
from workers.worker.context import WorkerContext

log = logging.getLogger(__name__)


async def submit(
    gw: WorkerContext, message: PipelineMessage, callback_url: str | None, key: str
) -> tuple[Outcome | None, dict[str, Any] | None]:
    """One POST to the bot's pipeline: (None, its answer) once it took the update,
    ``Retry`` while it is away (or its breaker is open) and the retry time lasts, else
    the dead letter. The retries are the lane's (``Retry``): the chat waits, other chats
    go on, and so do other bots' (``release``: the wait does not hold the reads)."""
    s, breaker = gw.services, gw.bot.breaker
    if not gw.fence.valid():
        raise LeaseLost  # another worker owns this chat's partition now
    wait = breaker.wait_time()  # 0: closed, or this update is the half-open probe
    if wait > 0:
        return await _away(gw, message, f"circuit open ({breaker.state})", wait), None
    probe = breaker.probing
    try:
        body = await s.metrics.for_bot(gw.entry.bot_id).submit(
            gw.bot.pipeline, message, callback_url, key
        )
    except PipelineRejected as exc:
        breaker.success()  # it answered: up, even if it refused this one
        s.count("pipeline_rejected")
        await apologise(gw, message)
        return Dead(Reason.PIPELINE_REJECTED, str(exc)), None
    except ReplyShapeError as exc:  # it answered, with a body that cannot be used
        breaker.success()
        return await bad_reply(gw, message, exc), None
    except PipelineUnavailable as exc:
        breaker.failure()
        return await _away(gw, message, str(exc)), None
    except BaseException:
        if probe:
            breaker.abandon()  # cancelled mid-probe: the next update probes instead
        raise
    breaker.success()
    return None, body


async def _away(
    gw: WorkerContext, message: PipelineMessage, why: str, wait: float = 0.0
) -> Outcome:
    """The bot's pipeline is away (``why``): ``Retry`` after the backoff (at least
    ``wait``, the breaker's) while the retry time lasts, else the dead letter and the
    apology. The retry releases the read capacity: it waits on this bot's pipeline only."""
    s = gw.services
    elapsed = time.monotonic() - (gw.since or time.monotonic())
    delay = max(wait, backoff(gw.retries, base=0.5, cap=15.0))
    attempts = gw.retries + 1
    if elapsed + delay > s.options.retry_seconds:
        s.count("pipeline_unavailable")
        await apologise(gw, message)
        why = f"{why} (gave up after {attempts} attempts, {elapsed:.0f}s)"
        return Dead(Reason.PIPELINE_UNAVAILABLE, why)
    # The breaker's waits are many and alike (one per chat): only a failed call warns.
    level = logging.DEBUG if wait > 0 else logging.WARNING
    log.log(
        level,
        "pipeline unavailable for update %s of bot %s: %s; retry in %.1fs",
        gw.entry.update_id,
        gw.bot.name,
        why,
        delay,
        extra={"update_id": gw.entry.update_id},
    )
    if s.options.delay_notice and elapsed >= s.options.delay_notice_after and not message.quiet:
        await _notify_delay(gw, message)
    # memo: when the retry budget started (a pause before it does not count)
    start = gw.since or time.monotonic()
    return Retry(delay, f"pipeline unavailable: {why}", memo=start, release=True)


async def bad_reply(gw: WorkerContext, message: PipelineMessage, exc: ReplyShapeError) -> Dead:
    """A synchronous reply that cannot be sent: dead-lettered at once (asking again would
    get the same body), and the user gets the apology instead of silence."""
    gw.services.count("pipeline_bad_reply")
    await apologise(gw, message)
    return Dead(Reason.PIPELINE_BAD_REPLY, f"unusable reply body: {exc}")


async def _notify_delay(gw: WorkerContext, message: PipelineMessage) -> None:
    """At most one "we are delayed" note per chat per outage (shared across workers)."""
    s = gw.services
    marker = s.keys.delay_notice(gw.bot.bot_id, message.chat_id)
    if await s.redis.set(marker, "1", nx=True, ex=int(s.options.delay_notice_window)):
        await gw.reply(s.options.delay_notice, origin="gateway", key="delayed", now=True)


async def apologise(gw: WorkerContext, message: PipelineMessage) -> None:
    """One short note to the user; the reply id makes a redelivery not send it again.
    None for an event or a deep link: the user asked nothing."""
    if message.quiet:
        return
    await gw.reply(
        gw.services.options.apology_text, reply_to=message.reply_to, origin="gateway", key="apology"
    )
