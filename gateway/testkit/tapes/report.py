"""``tg-gateway diff --report FILE``: the diff's findings as Markdown or HTML, and a latency
plot (PNG) beside it.

The format follows the file's extension (``.md``, ``.html``); the plot is ``FILE``'s stem
plus ``-latency.png`` in the same folder, referenced from the report by its name. Every
text that comes from a tape (reply texts, labels, chat ids) is user data: escaped for HTML
in both formats (Markdown renders raw HTML), and ``|`` escaped in Markdown tables.
matplotlib (Agg, no display) is imported only by ``write_plot``: the CLI never loads it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.core.errors import UsageError

if TYPE_CHECKING:  # the CLI hands diff's report here (diff does not import this module)
    from gateway.testkit.tapes.diff import DiffReport

FORMATS = {".md": "markdown", ".html": "html", ".htm": "html"}
PERCENTILES = ("p50", "p95", "p99")


def report_format(path: str) -> str:
    """``markdown`` or ``html`` by the extension; a ``UsageError`` (exit 2) otherwise."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"--report {path}: the report is .md (Markdown) or .html (HTML)")
    return fmt


def plot_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(f"{p.stem}-latency.png")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _summary(report: DiffReport) -> str:
    if report.same:
        return f"same answers: {report.messages} inbound message(s) compared"
    return f"{len(report.findings)} difference(s) in {report.messages} inbound message(s)"


def _md(text: str) -> str:
    """A Markdown table cell: HTML-escaped (raw HTML renders), pipes and newlines kept out."""
    return html.escape(text).replace("|", "\\|").replace("\n", " ").replace("`", "&#96;")


def render_markdown(report: DiffReport, base: str, run: str, plot: str) -> str:
    lines = ["# tg-gateway diff", "", f"- base: `{_md(base)}`", f"- run: `{_md(run)}`",
             f"- **{_summary(report)}**"]  # fmt: skip
    if report.paired_by != "id":
        lines.append(f"- chats paired by {report.paired_by}: the tapes' chat ids differ")
    if report.findings:
        lines += ["", "## Differences", "", "| chat | where | kind | detail |", "|---|---|---|---|"]
        for f in report.findings:
            lines.append(f"| {_md(f.chat)} | {_md(f.where)} | {f.kind} | {_md(f.detail)} |")
    lines += ["", "## Latency (ms, update received -> reply's result)", "",
              "| | base | run |", "|---|---:|---:|"]  # fmt: skip
    for p in PERCENTILES:
        lines.append(
            f"| {p} | {_ms(report.latency['base'][p])} | {_ms(report.latency['run'][p])} |"
        )
    lines += ["", f"![latency]({_md(plot)})", ""]
    return "\n".join(lines)


def render_html(report: DiffReport, base: str, run: str, plot: str) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(f.chat)}</td><td>{e(f.where)}</td><td class='{e(f.kind)}'>{e(f.kind)}</td>"
        f"<td>{e(f.detail)}</td></tr>\n"
        for f in report.findings
    )
    lat = "".join(
        f"<tr><td>{p}</td><td>{_ms(report.latency['base'][p])}</td>"
        f"<td>{_ms(report.latency['run'][p])}</td></tr>\n"
        for p in PERCENTILES
    )
    paired = (
        f"<p>chats paired by {e(report.paired_by)}: the tapes' chat ids differ</p>"
        if report.paired_by != "id"
        else ""
    )
    table = (
        "<h2>Differences</h2>\n<table><tr><th>chat</th><th>where</th><th>kind</th>"
        f"<th>detail</th></tr>\n{rows}</table>"
        if report.findings
        else ""
    )
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>tg-gateway diff</title>\n"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        ".changed,.missing,.missing-message{color:#a00}</style></head><body>\n"
        f"<h1>tg-gateway diff</h1>\n<p>base: <code>{e(base)}</code><br>run: "
        f"<code>{e(run)}</code></p>\n<p><b>{e(_summary(report))}</b></p>\n{paired}\n{table}\n"
        "<h2>Latency (ms, update received -&gt; reply's result)</h2>\n"
        f"<table><tr><th></th><th>base</th><th>run</th></tr>\n{lat}</table>\n"
        f"<p><img src='{e(plot, quote=True)}' alt='latency'></p>\n</body></html>\n"
    )


def write_plot(path: Path, report: DiffReport, latencies: dict[str, list[float]]) -> None:
    """Base and run: p50/p95/p99 as bars and each reply's latency as a distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, dist) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        width = 0.38
        for n, (name, values) in enumerate(latencies.items()):
            data = sorted(values)
            marks = [report.latency[name][p] or 0.0 for p in PERCENTILES]
            xs = [i + (n - 0.5) * width for i in range(len(PERCENTILES))]
            bars.bar(xs, marks, width, label=name)
            if data:
                ys = [(i + 1) / len(data) for i in range(len(data))]
                dist.step(data, ys, where="post", label=f"{name} ({len(data)})")
        bars.set_xticks(range(len(PERCENTILES)), list(PERCENTILES))
        bars.set_ylabel("ms")
        bars.set_title("latency percentiles")
        bars.legend()
        dist.set_xlabel("ms (update received -> reply's result)")
        dist.set_ylabel("fraction of replies")
        dist.set_title("distribution")
        if any(latencies.values()):
            dist.legend()
        else:
            dist.text(0.5, 0.5, "no results on the tapes", ha="center", transform=dist.transAxes)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


def write_report(
    path: str, report: DiffReport, latencies: dict[str, list[float]], base: str, run: str
) -> str:
    """Write the report and its plot; returns the line saying so."""
    fmt = report_format(path)
    plot = plot_path(path)
    try:
        write_plot(plot, report, latencies)
        render = render_markdown if fmt == "markdown" else render_html
        Path(path).write_text(render(report, base, run, plot.name), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--report {path}: cannot write it ({exc.strerror})") from None
    return f"report: {path} (plot {plot})"
