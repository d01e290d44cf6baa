"""The load's report: a table of p50/p95/p99 by share, and a plot (matplotlib, imported
only when asked for)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.testkit.load.measure import Reply, percentile
from gateway.testkit.load.run import LoadReport

SHARES = ("total", "pipeline", "limiter wait", "gateway own")


def shares(replies: Sequence[Reply]) -> dict[str, list[float]]:
    """Milliseconds per share, one value per reply."""
    return {
        "total": [r.total * 1000 for r in replies],
        "pipeline": [r.pipeline * 1000 for r in replies],
        "limiter wait": [r.limiter * 1000 for r in replies],
        "gateway own": [r.own * 1000 for r in replies],
    }


def render(report: LoadReport) -> str:
    lines = [
        f"load: {report.sent} of {report.planned} update(s) sent in {report.took:.2f}s: "
        f"{report.achieved_rate:.1f}/s achieved of {report.target_rate:g}/s target"
        f" ({report.errors} refused by the webhook)"
        + ("  [interrupted: partial report]" if report.interrupted else ""),
        f"answered: {report.answered} of {report.sent} update(s); {len(report.replies)} "
        f"Bot API call(s) measured, {report.unmatched} result(s) without a matching call",
    ]
    if report.unanswered:
        shown = ", ".join(map(str, report.unanswered[:10]))
        lines.append(f"not answered in time: {len(report.unanswered)} (update ids {shown}...)")
    if not report.pipeline_measured:
        lines.append("pipeline: not measured (no --pipeline): counted as the gateway's own")
    lines.append(f"{'latency (ms)':<14}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}")
    for name, values in shares(report.replies).items():
        cells = "".join(f"{percentile(values, q):9.2f}" for q in (50, 95, 99, 100))
        lines.append(f"{name:<14}{cells}")
    return "\n".join(lines)


def plot(series: Mapping[str, Sequence[float]], path: str, title: str) -> None:
    """One cumulative distribution line per series (milliseconds), log x axis, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, values in series.items():
        ordered = sorted(v for v in values if v > 0)
        if ordered:
            n = len(ordered)
            ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("share of replies at or below")
    ax.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
    ax.grid(True, which="both", linewidth=0.3)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
