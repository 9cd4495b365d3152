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
    assert re.fullmatch(r"training: 100\.0% \(30/30 steps\) \[\S+ elapsed, about \S+ left, .*steps/s, loss=0\.5\]",
                        lines[-1]), lines[-1]


def test_progress_in_a_log_without_a_total_counts_on_from_a_resumed_start():
    log = io.StringIO()
    with progress_bar(None, stream=log, log_interval=0, desc="scoring", unit=" sent", initial=1_000) as bar:
        bar.update(234)
    last = log.getvalue().splitlines()[-1]
    assert re.fullmatch(r"scoring: 1234 sent \[\S+ elapsed, .*sent/s\]", last), last


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_one_line_an_interval_and_a_last_one_on_close(monkeypatch):
    import tqdm.std

    clock = Clock()
    monkeypatch.setattr(tqdm.std, "time", clock)  # what each bar reads as its clock
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # no monitor thread on the real clock
    log = io.StringIO()
    with progress_bar(500, stream=log, log_interval=60, desc="training", unit=" steps", initial=300) as bar:
        for _ in range(190):  # a step a second, for 190 s
            clock.now += 1
            bar.update(1)
        clock.now += 0.5
    lines = log.getvalue().splitlines()
    assert [line.split(" ")[1] for line in lines] == ["72.0%", "84.0%", "96.0%", "98.0%"], lines
    assert lines[0].startswith("training: 72.0% (360/500 steps) [01:00 elapsed, about 02:20 left, 1.00 steps/s")
    assert lines[-1].startswith("training: 98.0% (490/500 steps) [03:10 elapsed"), "the state at close"


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
    assert log.getvalue().splitlines()[-1].startswith("work: 100.0% (5/5 it) [")


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
