"""The Prometheus metrics of every role, as ``deploy/metrics.yaml`` (the catalog) lists them.

``SPECS`` declares each metric once: name, type, help, label names, the roles that export
it, buckets (``tests/unit/test_metrics.py`` holds it equal to the catalog). A process
builds one ``Metrics`` for the roles it hosts and passes it down; hot paths keep the
children they touch (``Metrics.child``), so counting is one increment: the children are
``gateway.core.accumulators``' lock-free ones (one event-loop thread counts and scrapes),
exported under the same names, types, labels and buckets as prometheus_client's. Without a
``METRICS_TOKEN`` nothing is exported and ``Metrics.off()`` hands out no-op children:
metrics on or off is one setting.

The ``tg_gateway_stream_*`` / ``tg_gateway_role_*`` gauges (``scraped=True``) are read
from Redis at scrape time (``gateway.runtime.metrics_export.StreamGauges``), not set here.
The ``tg_gateway_telegram_webhook_*`` metrics belong to the webhook watchdog and are
declared with it.
"""

from __future__ import annotations

import hmac
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

import prometheus_client
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from gateway.core.accumulators import FamiliesCollector, Family
from gateway.core.bot_labels import DEFAULT_LIMIT, BotLabels

# The catalog lists no *_created series; one flag for the process (prometheus_client's).
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

Kind = Literal["counter", "gauge", "histogram"]
ROLES = frozenset({"ingress", "worker", "sender"})
INGRESS, WORKER, SENDER = frozenset({"ingress"}), frozenset({"worker"}), frozenset({"sender"})
CONSUMERS = WORKER | SENDER
STREAM_GROUP = ("stream", "group")
PARTITIONED = ("stream", "group", "partition")


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    roles: frozenset[str]
    buckets: tuple[float, ...] = ()
    scraped: bool = False  # read from Redis when scraped (StreamGauges), not set in process


def _spec(*args: Any, **kw: Any) -> Spec:
    return Spec(*args, **kw)


SPECS: tuple[Spec, ...] = (
    # --- ingress
    _spec("tg_gateway_ingress_updates_total", "counter",
          "Telegram updates received, by how they arrived and what became of them.",
          ("source", "outcome", "bot"), INGRESS),
    _spec("tg_gateway_ingress_rejected_total", "counter",
          "Requests the ingress refused, by endpoint and reason.", ("endpoint", "reason"), INGRESS),
    _spec("tg_gateway_ingress_request_duration_seconds", "histogram",
          "Time from a request's first byte to the end of its answer.", ("endpoint", "status"),
          INGRESS, (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)),
    _spec("tg_gateway_ingress_callbacks_total", "counter",
          "Pipeline reply callbacks by outcome.", ("outcome",), INGRESS),
    # --- worker
    _spec("tg_gateway_worker_updates_total", "counter", "Updates a worker finished, by outcome.",
          ("outcome", "bot"), WORKER),
    _spec("tg_gateway_worker_pipeline_requests_total", "counter",
          "Calls to the pipeline, by result.", ("status", "bot"), WORKER),
    _spec("tg_gateway_worker_pipeline_request_duration_seconds", "histogram",
          "Duration of one pipeline call (one attempt), by result.", ("status",), WORKER,
          (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
    _spec("tg_gateway_worker_breaker_state", "gauge",
          "The pipeline circuit breaker of this process, 1 for the current state.", ("state",),
          WORKER),
    _spec("tg_gateway_worker_breaker_opened_total", "counter",
          "Times this process's breaker went to open.", (), WORKER),
    _spec("tg_gateway_worker_commands_total", "counter",
          "Bot commands answered by the worker itself, by command.", ("command", "bot"), WORKER),
    _spec("tg_gateway_dead_letters_total", "counter",
          "Entries moved to the dead-letter stream, by stage and reason.",
          ("stage", "reason", "bot"), ROLES),
    # --- sender
    _spec("tg_gateway_sender_sends_total", "counter", "Bot API send calls, by method and outcome.",
          ("method", "outcome", "bot"), SENDER),
    _spec("tg_gateway_sender_telegram_errors_total", "counter",
          "Error answers from the Bot API, by method and error code.", ("method", "code", "bot"),
          SENDER),
    _spec("tg_gateway_sender_flood_wait_seconds_total", "counter",
          "Seconds of retry_after Telegram imposed in 429 answers, by scope.", ("scope", "bot"),
          SENDER),
    _spec("tg_gateway_sender_arrival_push_seconds_total", "counter",
          "Seconds the bot's sends were held back after late arrivals.", ("bot",), SENDER),
    _spec("tg_gateway_sender_limiter_wait_seconds", "histogram",
          "Time a send waited for budget in the shared rate limiter.", ("scope", "bot"), SENDER,
          (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)),
    _spec("tg_gateway_sender_queue_latency_seconds", "histogram",
          "Time from a reply's enqueued_at to Telegram's ok.", ("method", "bot"), SENDER,
          (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)),
    _spec("tg_gateway_sender_end_to_end_latency_seconds", "histogram",
          "Time from the update's received_at to Telegram's ok for its reply.", ("bot",), SENDER,
          (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)),
    _spec("tg_gateway_sender_split_parts_total", "counter",
          "Messages sent as parts of a text longer than Telegram's limit.", (), SENDER),
    _spec("tg_gateway_sender_drafts_total", "counter",
          "Streamed replies' drafts (sendMessageDraft), by outcome.", ("outcome",), SENDER),
    # --- stream runtime
    _spec("tg_gateway_stream_length", "gauge", "XLEN of a stream partition.",
          ("stream", "partition"), ROLES, scraped=True),
    _spec("tg_gateway_stream_lag", "gauge",
          "Entries of a partition not yet read by the consumer group.", PARTITIONED, ROLES,
          scraped=True),
    _spec("tg_gateway_stream_pending", "gauge",
          "Entries of a partition read by the group and not yet acknowledged.", PARTITIONED,
          ROLES, scraped=True),
    _spec("tg_gateway_stream_oldest_pending_age_seconds", "gauge",
          "Age of the oldest unacknowledged entry of a partition for the group.", PARTITIONED,
          ROLES, scraped=True),
    _spec("tg_gateway_stream_claims_total", "counter",
          "Entries this process claimed from a consumer idle for CLAIM_IDLE_MS.", STREAM_GROUP,
          CONSUMERS),
    _spec("tg_gateway_stream_redeliveries_total", "counter",
          "Entries this process handled that had been delivered before.", STREAM_GROUP,
          CONSUMERS),
    _spec("tg_gateway_stream_gauge_errors_total", "counter",
          "Scrapes whose Redis-read gauges could not be read in time (exported without them).",
          (), ROLES),
    _spec("tg_gateway_partitions_owned", "gauge", "Partitions whose lease this process holds.",
          ("role",), CONSUMERS),
    _spec("tg_gateway_lease_takeovers_total", "counter",
          "Partition leases this process took.", ("role",), CONSUMERS),
    # --- autoscaling and liveness
    _spec("tg_gateway_role_lag", "gauge",
          "Entries of the role's streams its group has not acknowledged (lag + pending).",
          ("role",), ROLES, scraped=True),
    _spec("tg_gateway_role_oldest_unacked_age_seconds", "gauge",
          "Age of the oldest entry the role has not acknowledged.", ("role",), ROLES,
          scraped=True),
    _spec("tg_gateway_role_members", "gauge", "Live processes of a role (lease heartbeats).",
          ("role",), ROLES, scraped=True),
    # --- build and settings
    _spec("tg_gateway_build_info", "gauge", "Always 1; the labels say what runs.",
          ("version", "python", "role"), ROLES),
    _spec("tg_gateway_settings_partitions", "gauge", "PARTITIONS, the partitions per stream.",
          (), ROLES),
    _spec("tg_gateway_settings_rate_limit_per_second", "gauge",
          "The sender's configured Telegram limits in sends per second.", ("scope",), SENDER),
    _spec("tg_gateway_settings_shutdown_grace_seconds", "gauge", "SHUTDOWN_GRACE_SECONDS.", (),
          CONSUMERS),
    _spec("tg_gateway_settings_max_deliveries", "gauge", "MAX_DELIVERIES.", (), CONSUMERS),
)  # fmt: skip
BY_NAME = {s.name: s for s in SPECS}


class _Null:
    """A child or family that counts nothing (metrics off)."""

    def labels(self, *_: str) -> _Null:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def set_function(self, f: Any) -> None:
        pass


NULL: Any = _Null()


def version() -> str:
    try:
        return metadata.version("tg-gateway")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "0+unknown"


class Metrics:
    """The metrics of one process: a registry holding the catalog's metrics of ``roles``
    (and prometheus_client's process/platform/GC collectors), or nothing at all (``off``).

    ``role`` is build_info's label: the role, or ``run`` for every role in one process.
    ``bots`` gives the per-bot families their ``bot`` label (``bot_limit`` bots by name,
    the rest ``other``: ``gateway.core.bot_labels``); it follows the process's registry
    once the role has one (``bots.follow(registry)``)."""

    def __init__(
        self,
        roles: Iterable[str],
        role: str,
        *,
        enabled: bool = True,
        bot_limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.roles = frozenset(roles)
        self.enabled = enabled
        self.bots = BotLabels(bot_limit)
        self.registry = CollectorRegistry(auto_describe=True)
        self._families: dict[str, Family] = {}
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.scraped: list[Spec] = []
        self._collectors: list[Collector] = []  # the registry's, in its order (exposition)
        if not enabled:
            return
        self._collectors += [
            ProcessCollector(registry=self.registry),
            PlatformCollector(registry=self.registry),
            GC_COLLECTOR,
        ]
        self.registry.register(GC_COLLECTOR)
        for spec in SPECS:
            if not spec.roles & self.roles:
                continue
            if spec.scraped:
                self.scraped.append(spec)
                continue
            self._families[spec.name] = Family(
                spec.name, spec.kind, spec.help, spec.labels, spec.buckets
            )
        self._catalog = FamiliesCollector(self._families.values())
        self.registry.register(self._catalog)
        self._collectors.append(self._catalog)
        self.child("tg_gateway_build_info", version(), platform.python_version(), role).set(1)

    @classmethod
    def off(cls) -> Metrics:
        return cls((), "off", enabled=False)

    def exports(self, name: str) -> bool:
        return name in self._families or any(s.name == name for s in self.scraped)

    def child(self, name: str, *labels: str) -> Any:
        """The series of ``name`` with these label values (kept: look it up once, use it
        often). A metric this process does not export, or metrics off: a no-op child."""
        if name not in BY_NAME:
            raise KeyError(f"{name} is not in the metric catalog (gateway.core.metrics.SPECS)")
        key = (name, labels)
        child = self._children.get(key)
        if child is None:
            family = self._families.get(name)
            child = NULL if family is None else family.labels(*labels)
            self._children[key] = child
        return child

    def register(self, collector: Collector) -> None:
        if self.enabled:
            self.registry.register(collector)
            self._collectors.append(collector)

    def exposition(self, extra: Iterable[Metric] = ()) -> bytes:
        """The registry's text exposition and then ``extra``'s: ``generate_latest``'s
        bytes, with the catalog's families written by ``FamiliesCollector.render`` (a
        third of the time: no sample object per line)."""
        parts: list[bytes] = []
        for collector in self._collectors:
            if collector is self._catalog:
                text: list[str] = []
                self._catalog.render(text)
                parts.append("".join(text).encode())
            else:
                parts.append(generate_latest(collector))
        extras = list(extra)
        if extras:
            parts.append(generate_latest(_Metrics(extras)))
        return b"".join(parts)


class _Metrics:
    """Already collected metric families, as ``generate_latest`` asks for them."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def status_class(status: int) -> str:
    """2xx / 4xx / 5xx of an HTTP status (1xx and 3xx, which the gateway never answers,
    count as 2xx and 4xx)."""
    if status >= 500:
        return "5xx"
    return "4xx" if status >= 300 else "2xx"


def bearer_ok(header: bytes | None, token: bytes) -> bool:
    """Does an ``Authorization`` header carry ``Bearer <token>`` (constant-time compare)?"""
    if not header:
        return False
    scheme, _, value = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), token)
