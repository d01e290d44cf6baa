"""Progress of a replay or recording: plain lines off a terminal, rich's bar on one."""

from __future__ import annotations

import io

from gateway.testkit.tapes.progress import PlainProgress, RichProgress, progress


def test_plain_progress_lines_every_interval_and_at_the_end() -> None:
    """Off a terminal: a line per interval (rate, ETA, errors), one when it closes."""
    now = [0.0]
    out = io.StringIO()
    bar = PlainProgress("replay", 100, out, interval=5.0, clock=lambda: now[0], unit="updates")
    for _ in range(20):
        now[0] += 0.25
        bar.advance()
    bar.error()
    for _ in range(30):
        now[0] += 0.25
        bar.advance()
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "replay: 20/100 updates (20%), 4.0/s, ETA 0m20s, 0 error(s)"
    assert lines[1] == "replay: 40/100 updates (40%), 4.0/s, ETA 0m15s, 1 error(s)"
    assert lines[-1] == "replay: 50/100 updates (50%), 4.0/s, ETA 0m13s, 1 error(s) in 0m13s"
    assert len(lines) == 3


def test_progress_without_a_total_and_off_a_terminal_is_plain() -> None:
    out = io.StringIO()
    bar = progress("record", None, out, unit="events")
    assert isinstance(bar, PlainProgress)
    bar.advance(7)
    bar.close()
    assert out.getvalue().startswith("record: 7 events, ") and "ETA" not in out.getvalue()


def test_on_a_terminal_it_is_richs_bar() -> None:
    """A TTY gets rich's bar: label, counts, rate and errors drawn, closed cleanly."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = progress("replay", 10, out)
    assert isinstance(bar, RichProgress)
    bar.advance(4)
    bar.error()
    bar.close()
    text = out.getvalue()
    assert "replay" in text and "4/10" in text and "1 error(s)" in text and "/s" in text
