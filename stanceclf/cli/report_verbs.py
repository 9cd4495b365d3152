"""Verbs that show why and show the whole: ``explain`` a few sentences, ``report`` on a scored corpus."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from stanceclf.cli.common import BACKEND_OPTION, FAST_OPTION, fail, load_model
from stanceclf.errors import StanceclfError
from stanceclf.infer.corpus_summary import EXAMPLES_PER_LIST
from stanceclf.infer.explain import DEFAULT_METHOD, METHODS

#: Words listed per label where the output is not a terminal.
TOP_WORDS = 5


def explain(
    source: str = typer.Argument(..., help="A text file, '-' for standard input, or the text itself."),
    label: Optional[str] = typer.Option(None, help="Explain this label on every sentence (default: each "
                                        "sentence's flagged labels)."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write the explanations as an HTML page."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per sentence, with every word's weight."),
    model: Optional[Path] = typer.Option(None, help="Model directory, or a shipped model's name such as "
                                            "claim-types-student (default: claim-types)."),
    method: str = typer.Option(DEFAULT_METHOD, help=f"{' or '.join(METHODS)} (see stanceclf.infer.explain)."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
) -> None:
    """Show which words pushed each flagged label's calibrated score: coloured on a terminal (red up, blue
    down), the top words per label elsewhere."""
    from rich.console import Console

    from stanceclf.data.documents import decode_document_text, read_document_text
    from stanceclf.files import write_atomically
    from stanceclf.infer.explain import explain as explain_text, explanations_page

    try:
        loaded = load_model(model, backend, fast)
        if source == "-":
            text = decode_document_text(sys.stdin.buffer.read(), "<stdin>")[0]
        else:
            text = read_document_text(source) if Path(source).is_file() else source
        results = explain_text(text, label=label, model=loaded, method=method)
        if html_out is not None:
            write_atomically(html_out, explanations_page(results).encode("utf-8"))
    except StanceclfError as error:
        fail(error)
    if as_json:
        for result in results:
            typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        _print_explanations(Console(highlight=False), results)
    if results and results[0].note:
        typer.secho(f"note: {results[0].note}", fg=typer.colors.YELLOW, err=True)


def _print_explanations(console, results) -> None:
    from rich.text import Text

    shown = [(index, result) for index, result in enumerate(results) if result.explanations]
    if not shown:
        console.print("No sentence has a label to explain.")
        return
    for index, result in shown:
        for name, label in result.explanations.items():
            verdict = "flagged" if label.flagged else "not flagged"
            heading = f"sentence {index} · {name} {label.score:.3f} (threshold {label.threshold:.3f}, {verdict})"
            if console.is_terminal:
                console.print(Text(heading, style="bold"))
                console.print(_coloured(result, label))
            else:
                top = ", ".join(f"{w.text} ({w.weight:+.3f})" for w in label.top(TOP_WORDS)) or "-"
                console.print(f"{heading}\t{' '.join(result.text.split())}\ttop words: {top}", soft_wrap=True)


def _coloured(result, label):
    """The sentence as rich text, each word on a background for its weight (red: up, blue: down)."""
    from rich.text import Text

    from stanceclf.infer.explain import word_tint

    scale = max((abs(w.weight) for w in label.words), default=0.0)
    text = Text(result.text)
    for word in label.words:
        *colour, opacity = word_tint(word.weight, scale)
        if opacity >= 0.075:  # faint backgrounds hardly show on a terminal; they only add noise
            red, green, blue = (round(255 - opacity * (255 - part)) for part in colour)  # over white
            text.stylize(f"black on rgb({red},{green},{blue})", word.start - result.start, word.end - result.start)
    return text


def report(
    scores: Path = typer.Argument(..., help="The output of 'stanceclf score': .jsonl, .csv or .parquet; sentence "
                                  "rows or --per-document rows."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write (one self-contained page)."),
    model: Optional[Path] = typer.Option(None, help="The model that scored the corpus (its thresholds; it explains "
                                            "the sentences shown): a directory or a shipped model's name "
                                            "(default: claim-types)."),
    by: List[str] = typer.Option([], "--by", help="A metadata field to show shares by (repeatable), such as "
                                 "domain or outlet; read from --metadata."),
    date_field: str = typer.Option("date", help="The metadata field with each document's date (ISO), for the "
                                   "shares over time; skipped when no document has it."),
    metadata: List[Path] = typer.Option([], "--metadata", help="The file(s) 'stanceclf score' read (JSONL, CSV, "
                                        "Parquet), to join --by and the date field by document id."),
    id_field: Optional[str] = typer.Option(None, help="As given to 'stanceclf score': the field holding the "
                                           "document id in --metadata (default: 'id' where present, else FILE:LINE)."),
    examples: int = typer.Option(EXAMPLES_PER_LIST, min=1, help="Sentences per label in each list (most "
                                 "confident, most borderline, random flagged)."),
    with_explanations: bool = typer.Option(True, "--explain/--no-explain", help="Explain the sentences shown "
                                           "(loads the model; --no-explain reads only its thresholds)."),
    title: Optional[str] = typer.Option(None, help="The page's title (default: from the scores file's name)."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
) -> None:
    """Write one self-contained HTML page about a scored corpus: shares per label, co-occurrence, scores against
    thresholds, shares by a field and over time, and example sentences with their explanations."""
    from stanceclf.infer.report import write_report

    try:
        result = write_report(scores, out, model=model, by=by, date_field=date_field or None, metadata=metadata,
                              id_field=id_field, examples=examples, with_explanations=with_explanations,
                              title=title, backend="auto" if fast else backend)
    except StanceclfError as error:
        fail(error)
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"wrote {result.out} ({result.bytes / 1e6:.1f} MB): {result.documents:,} documents, "
               f"{result.sentences:,} sentences in {result.seconds:.1f} s", err=True)
