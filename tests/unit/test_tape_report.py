"""``diff --report``: Markdown or HTML by extension, the same findings, a latency PNG beside."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app.cli import main
from gateway.testkit.tapes.tape import write_tape
from tests.unit.test_tape_diff import base_events, send, tape

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def two_tapes(tmp_path: Path, changed_text: str = "It is 6.") -> tuple[str, str]:
    base, run = base_events(), base_events()
    run[4] = send(101, 2, changed_text, 2.1)
    paths = []
    for name, events in (("base", base), ("run", run)):
        t = tape(*events)
        write_tape(tmp_path / f"{name}.jsonl", t.header, t.events)
        paths.append(str(tmp_path / f"{name}.jsonl"))
    return paths[0], paths[1]


@pytest.mark.parametrize("name", ["report.md", "report.html"])
def test_the_report_names_the_changed_message_and_has_a_real_plot(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 as without --report; the report holds the finding; the PNG is a PNG."""
    base, run = two_tapes(tmp_path)
    report = tmp_path / name
    assert main(["diff", base, run, "--report", str(report)]) == 1
    text = report.read_text()
    assert "1 difference(s) in 3 inbound message(s)" in text
    assert "chat 2 message 1 (update 101 &#x27;price?&#x27;) reply 1" in text
    assert "It is 5." in text and "It is 6." in text
    assert "report-latency.png" in text and "p99" in text
    png = (tmp_path / "report-latency.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert f"report: {report}" in capsys.readouterr().out


def test_html_escapes_reply_texts(tmp_path: Path) -> None:
    """A reply text is user data: no markup of its own reaches the HTML or Markdown."""
    base, run = two_tapes(
        tmp_path, changed_text="<script>alert('x')</script> <img src=x onerror=y> |"
    )
    for name in ("r.html", "r.md"):
        assert main(["diff", base, run, "--report", str(tmp_path / name)]) == 1
        text = (tmp_path / name).read_text()
        assert "<script>" not in text and "<img src=x" not in text
        assert "&lt;script&gt;" in text


def test_same_answers_write_a_report_too(tmp_path: Path) -> None:
    base, _ = two_tapes(tmp_path)
    assert main(["diff", base, base, "--report", str(tmp_path / "same.md")]) == 0
    assert "same answers: 3 inbound message(s) compared" in (tmp_path / "same.md").read_text()


def test_a_bad_report_extension_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the tapes are read: nothing printed, nothing written."""
    base, run = two_tapes(tmp_path)
    assert main(["diff", base, run, "--report", str(tmp_path / "report.txt")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1
    assert "the report is .md (Markdown) or .html (HTML)" in out.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.jsonl", "run.jsonl"]
