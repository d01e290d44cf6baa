"""Lock-free metric children, read by a ``Collector`` when scraped.

prometheus_client's ``Counter`` / ``Gauge`` / ``Histogram`` guard every value with a
``threading.Lock`` (``values.MutexValue``): a counter ``inc`` is a lock round-trip, a
histogram ``observe`` two plus a linear scan of the buckets. Every role here counts on
one asyncio event-loop thread and is scraped on that same thread (``Scrape.render``), so
a value is never read or written concurrently: a plain attribute increment is enough
and a bucket is found by ``bisect`` on the sorted bounds. What a scrape shows is what
prometheus_client would show for the same calls (same families, samples, label order,
bucket bounds; ``tests/unit/test_accumulators.py`` compares the two expositions).

Not for a thread other than the loop's: two threads incrementing one child may lose an
increment (the GIL does not make ``+=`` atomic). No role counts off the loop.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

INF = math.inf


class CounterChild:
    """One counter series: ``inc`` adds to a float."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class GaugeChild:
    """One gauge series: a float, or a function read at scrape time (``set_function``)."""

    __slots__ = ("function", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.function: Callable[[], float] | None = None

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self.function = function

    def get(self) -> float:
        return self.function() if self.function is not None else self.value


class HistogramChild:
    """One histogram series: a count per bucket (not cumulative: the scrape adds them up,
    as prometheus_client does) and the sum. ``bounds`` end with +Inf."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # bisect_left: the first bound >= amount, i.e. prometheus_client's `amount <= bound`;
        # NaN goes into no bucket there, and into none here (only into the sum).
        self.sum += amount
        if amount == amount:
            self.counts[bisect_left(self.bounds, amount)] += 1


Child = CounterChild | GaugeChild | HistogramChild


class Family:
    """The series of one metric by label values; ``labels()`` makes a series once."""

    def __init__(
        self,
        name: str,
        kind: str,
        help: str,
        labelnames: Sequence[str],
        buckets: Sequence[float] = (),
    ) -> None:
        if kind not in ("counter", "gauge", "histogram"):
            raise ValueError(f"{name}: unknown metric type {kind!r}")
        self.name, self.kind, self.help = name, kind, help
        self.labelnames = tuple(labelnames)
        self.bounds = [float(b) for b in buckets]
        if kind == "histogram":
            if self.bounds != sorted(self.bounds):
                raise ValueError(f"{name}: buckets not in sorted order")
            if not self.bounds or self.bounds[-1] != INF:
                self.bounds.append(INF)
        self._le = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self.children: dict[tuple[str, ...], Child] = {}
        self._header = ""  # HELP and TYPE lines, as generate_latest writes them (render)
        self._prefixes: dict[tuple[str, ...], list[str]] = {}  # each series' line starts
        if not self.labelnames:
            self.labels()  # an unlabelled metric has its one series from the start

    def labels(self, *values: object) -> Child:
        key = tuple(str(v) for v in values)
        child = self.children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: incorrect label count {len(key)}")
            child = self._make()
            self.children[key] = child
        return child

    def _make(self) -> Child:
        if self.kind == "counter":
            return CounterChild()
        if self.kind == "gauge":
            return GaugeChild()
        return HistogramChild(self.bounds)

    def empty(self) -> Metric:
        """This metric's family without samples (what ``describe`` shows)."""
        names = list(self.labelnames)
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=names)
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=names)
        return HistogramMetricFamily(self.name, self.help, labels=names)

    def collect(self) -> Metric:
        family = self.empty()
        for key, child in self.children.items():
            if isinstance(child, CounterChild):
                assert isinstance(family, CounterMetricFamily)
                family.add_metric(key, child.value)
            elif isinstance(child, GaugeChild):
                assert isinstance(family, GaugeMetricFamily)
                family.add_metric(key, child.get())
            else:
                assert isinstance(family, HistogramMetricFamily)
                total, cumulative = 0.0, []
                for le, count in zip(self._le, child.counts, strict=True):
                    total += count
                    cumulative.append((le, total))
                # prometheus_client's Histogram: _count always, _sum only with no bound
                # below 0 (its HistogramMetricFamily would drop both).
                labels = dict(zip(self.labelnames, key, strict=True))
                family.add_metric(key, cumulative, None)
                family.add_sample(self.name + "_count", labels, total)
                if self.bounds[0] >= 0:
                    family.add_sample(self.name + "_sum", labels, child.sum)
        return family

    def render(self, out: list[str]) -> None:
        """Append this family's text exposition to ``out``: what ``generate_latest`` writes
        for ``collect()``, without building a sample object per line. Each series' line
        starts (name and labels) are written once, by generate_latest itself."""
        if not self._header:
            self._header = _text(self.empty())
        out.append(self._header)
        for key, child in self.children.items():
            prefixes = self._prefixes.get(key)
            if prefixes is None:
                prefixes = self._prefixes[key] = self._line_starts(key)
            if isinstance(child, CounterChild):
                out.append(f"{prefixes[0]} {_go(child.value)}\n")
            elif isinstance(child, GaugeChild):
                out.append(f"{prefixes[0]} {_go(child.get())}\n")
            else:
                total = 0.0
                for start, count in zip(prefixes, child.counts, strict=False):
                    total += count
                    out.append(f"{start} {_go(total)}\n")
                out.append(f"{prefixes[len(child.counts)]} {_go(total)}\n")  # _count
                if len(prefixes) > len(child.counts) + 1:  # _sum: no bound below 0
                    out.append(f"{prefixes[-1]} {_go(child.sum)}\n")

    def _line_starts(self, key: tuple[str, ...]) -> list[str]:
        labels = dict(zip(self.labelnames, key, strict=True))
        probe = GaugeMetricFamily(self.name, "")
        if self.kind == "counter":
            probe.add_sample(self.name.removesuffix("_total") + "_total", labels, 0.0)
        elif self.kind == "gauge":
            probe.add_sample(self.name, labels, 0.0)
        else:
            for le in self._le:
                probe.add_sample(self.name + "_bucket", {**labels, "le": le}, 0.0)
            probe.add_sample(self.name + "_count", labels, 0.0)
            if self.bounds[0] >= 0:
                probe.add_sample(self.name + "_sum", labels, 0.0)
        lines = _text(probe).splitlines()[2:]  # past HELP and TYPE
        return [line.removesuffix(" 0.0") for line in lines]


def _go(value: float) -> str:
    return floatToGoString(value)  # type: ignore[no-untyped-call,no-any-return]


class _One:
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self.metric]


def _text(metric: Metric) -> str:
    return generate_latest(_One(metric)).decode()


class FamiliesCollector(Collector):
    """Exports ``families`` in their order, as they are at the moment of the scrape."""

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return [f.collect() for f in self.families]

    def describe(self) -> Iterable[Metric]:
        return [f.empty() for f in self.families]

    def render(self, out: list[str]) -> None:
        """Append the families' text exposition (``generate_latest``'s, faster)."""
        for family in self.families:
            family.render(out)
