"""Progress displays: a bar on a terminal, plain lines in a log file, nothing when asked for none."""

from __future__ import annotations

import io
import re

from stanceclf import progress
from stanceclf.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_is_whole_lines_ending_at_the_total():
    log = io.StringIO()
    with progress_bar(30, stream=log, log_interval=0, desc="training", unit=" steps") as bar:
        for _ in range(3):
            bar.set_postfix(loss="0.5", refresh=False)
            bar.update(10)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) >= 3 and all(line == line.rstrip() for line in lines)
    assert re.fullmatch(r"training: 100% \(30/30 steps\) \[\S+ elapsed, about \S+ left, .*steps/s, loss=0\.5\]",
                        lines[-1]), lines[-1]


def test_progress_in_a_log_without_a_total_counts_on_from_a_resumed_start():
    log = io.StringIO()
    with progress_bar(None, stream=log, log_interval=0, desc="scoring", unit=" sent", initial=1_000) as bar:
        bar.update(234)
    last = log.getvalue().splitlines()[-1]
    assert re.fullmatch(r"scoring: 1234 sent \[\S+ elapsed, .*sent/s\]", last), last


def test_short_work_writes_no_line_to_a_log():
    log = io.StringIO()
    with progress_bar(30, stream=log, log_interval=60, desc="training") as bar:
        bar.update(30)
    assert log.getvalue() == ""


def test_the_log_interval_is_read_when_the_bar_is_made(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)
    with progress_bar(5, stream=log, desc="work") as bar:
        bar.update(5)
    assert log.getvalue().splitlines()[-1].startswith("work: 100% (5/5")


def test_a_terminal_gets_a_redrawn_bar_for_long_work_only():
    screen = Terminal()
    with progress_bar(10_000, stream=screen, desc="scoring") as bar:
        bar.update(10_000)
    assert "\r" in screen.getvalue() and "10000/10000" in screen.getvalue()
    short = Terminal()
    with progress_bar(10, stream=short, desc="scoring") as bar:
        bar.update(10)
    assert short.getvalue() == ""


def test_no_progress_writes_nothing_anywhere():
    for stream in (io.StringIO(), Terminal()):
        with progress_bar(10_000, show=False, stream=stream, log_interval=0) as bar:
            bar.update(10_000)
        assert stream.getvalue() == ""
