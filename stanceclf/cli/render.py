"""What ``stanceclf classify`` prints: a table on a terminal, tab-separated text elsewhere.

On a terminal (a rich :class:`~rich.console.Console` that is a terminal) each document is a
table: sentence number, one score column per label headed by the label and its threshold, a mark
on each score that reaches its threshold (the sentence's labels), and the text, wrapped to the
width and cut with an ellipsis past :data:`MAX_TEXT_CHARS`. Anywhere else (a pipe, a file) the output is
plain: no colour codes, one tab-separated line per sentence with a header line, scores as
reported (six decimals) and the whole text, so that ``cut``, ``awk`` and spreadsheets read it.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Characters of a sentence shown in the terminal table; the rest is replaced by an ellipsis.
MAX_TEXT_CHARS = 400
PASS_MARK = "✔"


def render_classified(console: Console, documents, labels: list[str], thresholds: dict[str, float], *,
                      all_sentences: bool = False) -> None:
    """Print ``documents`` (``(name, predictions)`` pairs): sentences with a label, or every one."""
    if console.is_terminal:
        _render_tables(console, documents, labels, thresholds, all_sentences)
    else:
        _render_plain(console, documents, labels, thresholds, all_sentences)


def _shown(predictions, all_sentences: bool):
    return [(index, p) for index, p in enumerate(predictions) if p.labels or all_sentences]


def _render_tables(console: Console, documents, labels, thresholds, all_sentences: bool) -> None:
    from rich import box

    console.print(f"{PASS_MARK} marks a score that reaches its label's threshold (under each label)", style="dim")
    for name, predictions in documents:
        shown = _shown(predictions, all_sentences)
        table = Table(title=f"{name}: {len(predictions)} sentences, {len(shown)} with labels"
                      + (" (all shown)" if all_sentences else ""), title_justify="left", box=box.SIMPLE_HEAD,
                      leading=1, expand=True)
        table.add_column("#", justify="right", no_wrap=True)
        for label in labels:
            # Left-aligned: the scores share a fixed width, and a trailing mark would shift right-aligned ones.
            table.add_column(f"{label}\n≥ {thresholds[label]:.3f}", no_wrap=True)
        table.add_column("text", ratio=1, min_width=20)
        for index, p in shown:
            scores = [Text(f"{p.scores[label]:.3f} {PASS_MARK}", style="bold green") if label in p.labels
                      else Text(f"{p.scores[label]:.3f}", style="dim") for label in labels]
            text = p.text if len(p.text) <= MAX_TEXT_CHARS else p.text[: MAX_TEXT_CHARS - 1] + "…"
            table.add_row(str(index), *scores, Text(text))
        console.print(table)


def _render_plain(console: Console, documents, labels, thresholds, all_sentences: bool) -> None:
    out = console.file
    out.write("# thresholds: " + " ".join(f"{label}={thresholds[label]}" for label in labels) + "\n")
    out.write("\t".join(["file", "sentence", "labels", *labels, "text"]) + "\n")
    for name, predictions in documents:
        for index, p in _shown(predictions, all_sentences):
            text = " ".join(p.text.split())  # a tab or newline inside would shift the columns
            cells = [name, str(index), ",".join(p.labels) or "-", *(f"{p.scores[label]:.6f}" for label in labels),
                     text]
            out.write("\t".join(cells) + "\n")
    out.flush()
