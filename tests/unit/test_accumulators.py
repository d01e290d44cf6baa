"""The lock-free metric children (gateway/core/accumulators.py) export exactly what
prometheus_client's own Counter / Gauge / Histogram export for the same calls, and the
ingress's request timer files each request under its endpoint and status class."""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.accumulators import (
    CounterChild,
    FamiliesCollector,
    Family,
    GaugeChild,
    HistogramChild,
)
from gateway.core.metrics import INGRESS, ROLES, SPECS, Metrics, Spec, version
from gateway.ingress.observe import IngressMetrics
from gateway.runtime.metrics_export import Scrape

TOKEN = b"accumulators-token-0123456789"


class _Catalog:
    """The ``tg_gateway_`` families of a registry (not the process/GC collectors)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return [f for f in self.registry.collect() if f.name.startswith("tg_gateway_")]


def _text(registry: CollectorRegistry) -> str:
    return generate_latest(_Catalog(registry)).decode()  # type: ignore[arg-type]


def _reference(spec: Spec, registry: CollectorRegistry) -> Any:
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, spec.labels, registry=registry)
    return Histogram(spec.name, spec.help, spec.labels, registry=registry, buckets=spec.buckets)


def _exercise(spec: Spec, child: Any, n: int) -> None:
    """The same calls on ours and on prometheus_client's (``n``: which label set)."""
    if spec.kind == "counter":
        child.inc()
        child.inc(2.5 * n)
    elif spec.kind == "gauge":
        child.set(7 + n)
        child.inc(3)
        child.dec(0.5)
    else:
        for bound in spec.buckets:  # exactly on, just under and just over every bound
            for value in (bound, bound * 0.999, bound * 1.001):
                child.observe(value)
        for value in (0.0, -1.0, spec.buckets[-1] * 10, 1e9 * n):
            child.observe(value)


def test_the_exposition_is_prometheus_clients_for_the_same_calls() -> None:
    """Every catalog metric a process counts: names, HELP/TYPE, label order, series order,
    bucket bounds (``le``), cumulative counts, sums and values, byte for byte."""
    ours = Metrics(ROLES, "run")
    ref_registry = CollectorRegistry(auto_describe=True)
    for spec in SPECS:
        if spec.scraped:
            continue
        ref = _reference(spec, ref_registry)
        if spec.name == "tg_gateway_build_info":
            ref.labels(version(), platform.python_version(), "run").set(1)
            continue
        label_sets = [tuple(f"{name}-{n}" for name in spec.labels) for n in (1, 2)]
        for n, labels in enumerate(label_sets if spec.labels else [()], start=1):
            _exercise(spec, ours.child(spec.name, *labels), n)
            _exercise(spec, ref.labels(*labels) if labels else ref, n)
    ours.child("tg_gateway_partitions_owned", "worker").set_function(lambda: 5)
    ref_registry._names_to_collectors["tg_gateway_partitions_owned"].labels("worker").set_function(
        lambda: 5
    )
    text = _text(ours.registry)
    assert text == _text(ref_registry)
    assert "tg_gateway_ingress_request_duration_seconds_bucket" in text  # not vacuous
    # The scrape's own writer (Metrics.exposition: FamiliesCollector.render) says the same.
    fast = ours.exposition().decode()
    assert "".join(line + "\n" for line in fast.splitlines() if "tg_gateway_" in line) == text
    assert "process_cpu_seconds_total" in fast and "python_gc_" in fast


def test_the_fast_writer_handles_what_the_catalog_does_not_use_yet() -> None:
    """Negative buckets (no _count/_sum), odd label values, huge and non-finite values."""
    ref_registry = CollectorRegistry()
    ref = Histogram("h_seconds", "h \\ help\nline", ["a"], registry=ref_registry,
                    buckets=(-1, 0, 1e10))  # fmt: skip
    gauge = Gauge("g", "g", ["a"], registry=ref_registry)
    ours = [Family("h_seconds", "histogram", "h \\ help\nline", ("a",), (-1, 0, 1e10)),
            Family("g", "gauge", "g", ("a",))]  # fmt: skip
    for value in (-5.0, 0.0, 3e12, math.inf):
        for h in (ref.labels('q"u\\o\nte'), ours[0].labels('q"u\\o\nte')):
            h.observe(value)
    for g in (gauge.labels("é"), ours[1].labels("é")):
        g.set(-math.inf)
    text: list[str] = []
    for family in ours:
        family.render(text)
    assert "".join(text) == generate_latest(ref_registry).decode()
    assert generate_latest(FamiliesCollector(ours)) == generate_latest(ref_registry)


def test_a_nan_goes_into_the_sum_and_no_bucket_as_with_prometheus_client() -> None:
    ours = Family("h_seconds", "histogram", "h", (), (0.1, 1))
    child = ours.labels()
    assert isinstance(child, HistogramChild)
    child.observe(math.nan)
    child.observe(0.5)
    assert child.counts == [0, 1, 0] and math.isnan(child.sum)


def test_counting_takes_no_lock() -> None:
    """The children a process counts with are the lock-free ones, not prometheus_client's
    (whose every inc/observe takes a threading.Lock)."""
    m = Metrics(ROLES, "run")
    kinds = {"counter": CounterChild, "gauge": GaugeChild, "histogram": HistogramChild}
    for spec in SPECS:
        if not spec.scraped:
            child = m.child(spec.name, *(f"x{i}" for i in range(len(spec.labels))))
            assert type(child) is kinds[spec.kind], spec.name
    ingress = IngressMetrics(Metrics(INGRESS, "ingress"), None)
    updates = ingress.for_bot(None).updates.values()
    hot = [*updates, *ingress.callbacks.values(), *ingress.durations.values()]
    assert all(type(c) in (CounterChild, HistogramChild) for c in hot)


def test_wrong_use_fails_as_prometheus_clients_does() -> None:
    counter = Family("c_total", "counter", "c", ("a",))
    with pytest.raises(ValueError, match="label count"):
        counter.labels("x", "y")
    with pytest.raises(ValueError, match="non-negative"):
        counter.labels("x").inc(-1)
    with pytest.raises(ValueError, match="sorted"):
        Family("h_seconds", "histogram", "h", (), (1, 0.5))


async def test_the_request_timer_files_each_request_by_endpoint_and_status_class() -> None:
    """200, 401, 503, and a route that fails before answering (5xx: the client saw a
    dropped connection), each counted once under its endpoint, with its duration."""
    ingress = IngressMetrics(Metrics(INGRESS, "ingress"), Scrape(Metrics.off(), TOKEN))

    def answering(status: int) -> Any:
        async def route(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        return route

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("broken before an answer")

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    for endpoint, route in [
        ("webhook", answering(200)),
        ("webhook", answering(200)),
        ("webhook", answering(401)),
        ("delivery", answering(503)),
        ("healthz", answering(204)),
    ]:
        await ingress.timed(route, endpoint, {}, receive, send)
    with pytest.raises(RuntimeError):
        await ingress.timed(failing, "readyz", {}, receive, send)
    assert len(sent) == 10  # every message reached the real send, in order
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [
        200, 200, 401, 503, 204
    ]  # fmt: skip
    text = generate_latest(ingress.metrics.registry).decode()
    counts = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for f in text_string_to_metric_families(text)
        if f.name == "tg_gateway_ingress_request_duration_seconds"
        for s in f.samples
        if s.name.endswith("_count") and s.value
    }
    assert counts == {
        ("webhook", "2xx"): 2,
        ("webhook", "4xx"): 1,
        ("delivery", "5xx"): 1,
        ("healthz", "2xx"): 1,
        ("readyz", "5xx"): 1,
    }
