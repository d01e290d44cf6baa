"""The worker's metrics (deploy/metrics.yaml, "worker"): children bound once per process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.core.bot_labels import PerBot
from gateway.core.errors import PipelineRejected, PipelineUnavailable, ReplyShapeError
from gateway.core.metrics import Metrics

OUTCOMES = ("replied", "no_reply", "command")  # dead_lettered: counted by the consumer
PIPELINE_STATUSES = ("2xx", "4xx", "5xx", "timeout", "network_error")
COMMANDS = ("start", "help", "status", "stats", "admin", "other")
BREAKER_STATES = ("closed", "open", "half_open")


class BotCounts:
    """One bot's children: its updates by outcome, commands and pipeline calls."""

    def __init__(self, m: Metrics, bot: str, durations: dict[str, Any]) -> None:
        self.updates = {o: m.child("tg_gateway_worker_updates_total", o, bot) for o in OUTCOMES}
        self.commands = {c: m.child("tg_gateway_worker_commands_total", c, bot) for c in COMMANDS}
        self._calls = {
            s: (m.child("tg_gateway_worker_pipeline_requests_total", s, bot), durations[s])
            for s in PIPELINE_STATUSES
        }

    async def submit(self, pipeline: Any, *args: Any) -> Any:
        """One pipeline call (``pipeline.submit(*args)``), counted and timed by its end."""
        called = time.perf_counter()
        try:
            body = await pipeline.submit(*args)
        except Exception as exc:
            self.pipeline_call(pipeline_status(exc), time.perf_counter() - called)
            raise
        self.pipeline_call("2xx", time.perf_counter() - called)
        return body

    def command(self, name: str | None) -> None:
        """An update answered by a command (ours by name; None: a WORKER_ROUTERS router)."""
        self.updates["command"].inc()
        self.commands[name or "other"].inc()

    def pipeline_call(self, status: str, seconds: float) -> None:
        count, duration = self._calls[status]
        count.inc()
        duration.observe(seconds)


class WorkerMetrics:
    """The worker's metrics; ``for_bot(bot_id)``: the children of one bot's updates (the
    pipeline call durations are not per bot: a histogram per bot costs too many series)."""

    def __init__(self, metrics: Metrics) -> None:
        m = self.metrics = metrics
        durations = {
            s: m.child("tg_gateway_worker_pipeline_request_duration_seconds", s)
            for s in PIPELINE_STATUSES
        }
        self.for_bot: Callable[[int | None], BotCounts] = PerBot(
            m.bots, lambda bot: BotCounts(m, bot, durations)
        )
        if not m.enabled:
            off = BotCounts(m, "none", durations)
            self.for_bot = lambda _bot_id: off
        self.breaker_opened = m.child("tg_gateway_worker_breaker_opened_total")

    @classmethod
    def off(cls) -> WorkerMetrics:
        return cls(Metrics.off())

    def watch_breaker(self, breaker: Any) -> None:
        """The breaker's state as three 0/1 series, read when scraped."""
        self.watch_breakers(lambda: [breaker])

    def watch_breakers(self, breakers: Callable[[], Iterable[Any]]) -> None:
        """The pipelines' breakers (one per pipeline URL the bots use, issue 15) as three
        0/1 series, read when scraped: a state is 1 while any breaker is in it (with one
        pipeline: its state, as before)."""
        for state in BREAKER_STATES:
            gauge = self.metrics.child("tg_gateway_worker_breaker_state", state)
            name = state.replace("_", "-")
            gauge.set_function(
                lambda name=name: 1.0 if any(b.state == name for b in breakers()) else 0.0
            )


def pipeline_status(exc: BaseException | None) -> str:
    """The ``status`` label of one pipeline call: how it ended (None: it answered 2xx)."""
    if exc is None:
        return "2xx"
    if isinstance(exc, PipelineRejected):
        return "4xx"
    if isinstance(exc, PipelineUnavailable):
        if exc.status is not None:
            return "5xx" if exc.status >= 500 else "4xx"  # 408 and 429 are retried
        return "timeout" if str(exc) == "timeout" else "network_error"
    if isinstance(exc, ReplyShapeError):
        return "2xx"  # it answered, with a body that cannot be used
    return "network_error"
