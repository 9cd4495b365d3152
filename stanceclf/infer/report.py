"""``stanceclf report``: one self-contained HTML page of a scored corpus (the output of ``stanceclf score``).

:func:`write_report` summarises the scores while streaming them (:mod:`stanceclf.infer.corpus_summary`),
explains the few sentences it kept (:mod:`stanceclf.infer.explain`) and renders the page: per-label shares of
sentences and documents, label co-occurrence, the distribution of calibrated scores against each threshold,
shares by a metadata field and over time, the kept sentences with their explanations highlighted, and the
documents they come from, each linked from its row. Thresholds come from the model named (default: the shipped
default), which also explains; a warning on the page counts the rows whose labels disagree with those
thresholds (a corpus scored with another model).

Plots are drawn by matplotlib and embedded as PNG data URIs: no script, font or image is fetched, so the page
opens offline. Every value read from the corpus (texts, ids, metadata) is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from stanceclf.files import write_atomically
from stanceclf.infer.explain import HIGHLIGHT_CSS, explain, highlighted_html
from stanceclf.infer.model import StanceModel
from stanceclf.infer.results import Prediction
from stanceclf.infer.corpus_summary import (EXAMPLE_LISTS, EXAMPLES_PER_LIST, HISTOGRAM_BINS, CorpusSummary,
                                            KeptDocument, Tally, summarize_scores)

#: Values of a --by field shown in its plot and table, the most documents first.
SHOWN_GROUPS = 15
#: Over this many days, shares over time are drawn per week; over three years, per month.
DAILY_UP_TO, WEEKLY_UP_TO = 92, 3 * 366
LIST_TITLES = {"confident": "Most confident", "borderline": "Most borderline (closest to the threshold, either side)",
               "sample": "A random sample of the flagged"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 72em; padding: 1em 2em; color: #222; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 90%; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
figure { margin: 0.5em 0 1.5em; } figure img { max-width: 100%; }
.warning { background: #fff3cd; padding: 0.5em 1em; border-left: 4px solid #e0a800; }
.examples li { margin: 0.6em 0; } .meta { font-size: 85%; color: #555; }
.doc ol li { margin: 0.3em 0; } .doc li.flagged { background: #fff8e1; }
.badge { font-size: 75%; background: #eee; border-radius: 3px; padding: 0 4px; margin-left: 4px; }
""" + HIGHLIGHT_CSS


def render_page(summary: CorpusSummary, explanations: dict, *, model_name: str, warnings: list[str],
                title: str) -> str:
    """The whole page of ``summary``; ``explanations`` as :func:`~stanceclf.infer.report.explain_examples`
    returns them."""
    documents = _shown_documents(summary)
    sections = [("summary", "Summary", _summary_section(summary, model_name, warnings))]
    sections += [(f"by-{i}", f"By {name}", _group_section(summary, name))
                 for i, name in enumerate(summary.by)]
    if summary.date_field is not None:
        sections.append(("time", "Over time", _time_section(summary)))
    if not summary.layout.per_document:
        sections.append(("examples", "Sentences", _examples_section(summary, explanations, documents)))
    sections.append(("documents", "Documents", _documents_section(summary, documents)))
    links = "".join(f'<a href="#{anchor}">{html.escape(name)}</a>' for anchor, name, _ in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1><nav>{links}</nav>\n'
            + "\n".join(f'<section id="{anchor}">{body}</section>' for anchor, _, body in sections)
            + "\n</body></html>\n")


# ---- plots --------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _embedded(figure, alt: str) -> str:
    """The figure as an ``<img>`` holding its PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<figure><img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _colours(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["tab10"](i % 10) for i in range(n)]


def _shares_plot(summary: CorpusSummary) -> str:
    figure = _figure(7, 2.8)
    axes = figure.subplots()
    x = np.arange(len(summary.labels))
    axes.bar(x - 0.2, 100 * summary.totals.sentence_share(), 0.4, label="of sentences")
    axes.bar(x + 0.2, 100 * summary.totals.document_share(), 0.4, label="of documents (at least one sentence)")
    axes.set_xticks(x, summary.labels)
    axes.set_ylabel("% flagged")
    axes.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2)
    return _embedded(figure, "share of sentences and of documents flagged with each label")


def _cooccurrence_plot(summary: CorpusSummary) -> str:
    matrices = [("documents", summary.cooccurrence_documents)]
    if not summary.layout.per_document:
        matrices.insert(0, ("sentences", summary.cooccurrence_sentences))
    figure = _figure(3.6 * len(matrices), 3.2)
    for axes, (unit, counts) in zip(np.atleast_1d(figure.subplots(1, len(matrices))), matrices):
        diagonal = np.maximum(np.diag(counts), 1)
        conditional = counts / diagonal[:, None]
        axes.imshow(conditional, vmin=0, vmax=1, cmap="Blues")
        for (i, j), count in np.ndenumerate(counts):
            axes.text(j, i, f"{count:,}\n{100 * conditional[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                      color="white" if conditional[i, j] > 0.6 else "black")
        ticks = range(len(summary.labels))
        axes.set_xticks(ticks, summary.labels, rotation=20, fontsize=8)
        axes.set_yticks(ticks, summary.labels, fontsize=8)
        axes.set_title(f"{unit} with both (% of the row's)", fontsize=9)
    return _embedded(figure, "label co-occurrence")


def _histogram_plot(summary: CorpusSummary) -> str:
    labels = summary.labels
    figure = _figure(3.2 * len(labels), 2.8)
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    for axes, label, counts, threshold, colour in zip(np.atleast_1d(figure.subplots(1, len(labels))), labels,
                                                      summary.histograms, summary.thresholds,
                                                      _colours(len(labels))):
        axes.stairs(counts, edges, fill=True, color=colour, alpha=0.7)
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1)
        axes.set_yscale("symlog", linthresh=1)
        axes.set_title(f"{label}: threshold {threshold:.3f} (dashed)", fontsize=8)
        axes.set_xlabel("calibrated score")
    np.atleast_1d(figure.axes)[0].set_ylabel("sentences")
    return _embedded(figure, "distribution of calibrated scores against each threshold")


def _group_plot(summary: CorpusSummary, name: str, values: list[str], tallies: list[Tally]) -> str:
    figure = _figure(8, 0.8 + 0.35 * len(values))
    axes = figure.subplots()
    y = np.arange(len(values))
    height = 0.8 / len(summary.labels)
    for j, (label, colour) in enumerate(zip(summary.labels, _colours(len(summary.labels)))):
        axes.barh(y + (j - (len(summary.labels) - 1) / 2) * height,
                  [100 * tally.sentence_share()[j] for tally in tallies], height, label=label, color=colour)
    axes.set_yticks(y, [value[:40] for value in values], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("% of sentences flagged")
    axes.legend(frameon=False, fontsize=8)
    return _embedded(figure, f"share of sentences flagged by {name}")


def _time_plot(summary: CorpusSummary, frame, rule: str) -> str:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    figure = _figure(9, 4.2)
    counts_axes, share_axes = figure.subplots(2, 1, sharex=True, height_ratios=[1, 2])
    width = {"D": 0.8, "W-MON": 5.5, "MS": 25}[rule]
    counts_axes.bar(frame.index, frame["documents"], width=width, color="#999")
    counts_axes.set_ylabel("documents")
    for label, colour in zip(summary.labels, _colours(len(summary.labels))):
        share = 100 * frame[label] / frame["sentences"].where(frame["sentences"] > 0)
        share_axes.plot(frame.index, share, marker=".", label=label, color=colour)
    share_axes.set_ylabel("% of sentences flagged")
    share_axes.legend(frameon=False, fontsize=8)
    locator = AutoDateLocator()
    share_axes.xaxis.set_major_locator(locator)
    share_axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    return _embedded(figure, "shares of sentences flagged over time")


# ---- sections ------------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _summary_section(summary: CorpusSummary, model_name: str, warnings: list[str]) -> str:
    totals = summary.totals
    kind = "per-document rows" if summary.layout.per_document else "sentence rows"
    facts = (f"{totals.documents:,} documents, {totals.sentences:,} sentences, read from {kind} of "
             f"<code>{html.escape(summary.source)}</code> in {summary.seconds:.1f} s; thresholds from the model "
             f"<code>{html.escape(model_name)}</code>.")
    rows = [[html.escape(label), f"{threshold:.3f}", f"{totals.label_sentences[j]:,}",
             _percent(totals.sentence_share()[j]), f"{totals.label_documents[j]:,}",
             _percent(totals.document_share()[j])]
            for j, (label, threshold) in enumerate(zip(summary.labels, summary.thresholds))]
    parts = [f"<h2>Summary</h2><p>{facts}</p>",
             *[f'<p class="warning">{html.escape(w)}</p>' for w in warnings],
             _table(["label", "threshold", "sentences", "share of sentences", "documents",
                     "share of documents"], rows),
             _shares_plot(summary), "<h3>Labels together</h3>", _cooccurrence_plot(summary)]
    if summary.layout.per_document:
        parts.append("<p>Per-document rows carry no scores or sentences: score without --per-document for the "
                     "distribution of scores and the sentences.</p>")
    else:
        parts += ["<h3>Calibrated scores against each threshold</h3>", _histogram_plot(summary)]
    return "\n".join(parts)


def _tally_cells(tally: Tally) -> list[str]:
    return [f"{tally.documents:,}", f"{tally.sentences:,}",
            *[f"{_percent(s)} / {_percent(d)}" for s, d in zip(tally.sentence_share(), tally.document_share())]]


def _group_section(summary: CorpusSummary, name: str) -> str:
    groups = summary.groups[name]
    ranked = sorted(groups.items(), key=lambda item: (-item[1].documents, item[0]))[:SHOWN_GROUPS]
    header = ["value", "documents", "sentences", *[f"{html.escape(label)}<br>sentences / documents"
                                                   for label in summary.labels]]
    rows = [[html.escape(value), *_tally_cells(tally)] for value, tally in ranked]
    plot = _group_plot(summary, name, [v for v, _ in ranked], [t for _, t in ranked]) if ranked else ""
    shown = f"the {len(ranked)} with the most documents of {len(groups):,} values" if len(groups) > len(ranked) \
        else f"all {len(groups):,} values"
    return (f"<h2>By {html.escape(name)}</h2><p>Shares flagged per value of <code>{html.escape(name)}</code>: "
            f"{shown}.</p>{plot}{_table(header, rows)}")


def _time_section(summary: CorpusSummary) -> str:
    import pandas as pd

    field = html.escape(summary.date_field)
    notes = []
    if summary.undated_documents:
        notes.append(f"{summary.undated_documents:,} documents have no {field}")
    if summary.unreadable_dates:
        notes.append(f"{summary.unreadable_dates:,} have a {field} that is not an ISO date (such as "
                     f"{html.escape(repr(summary.unreadable_date_example))})")
    note = f"<p>{'; '.join(notes)}: they are counted everywhere but here.</p>" if notes else ""
    if not summary.days:
        return f"<h2>Over time</h2><p>No document has a {field}.</p>{note}"
    days = sorted(summary.days)
    frame = pd.DataFrame([[t.documents, t.sentences, *t.label_sentences] for t in map(summary.days.get, days)],
                         index=pd.DatetimeIndex([date.fromordinal(d) for d in days]),
                         columns=["documents", "sentences", *summary.labels])
    span = days[-1] - days[0]
    rule = "D" if span <= DAILY_UP_TO else "W-MON" if span <= WEEKLY_UP_TO else "MS"
    frame = frame.resample(rule, label="left", closed="left").sum()
    period = {"D": "day", "W-MON": "week", "MS": "month"}[rule]
    return (f"<h2>Over time</h2><p>Documents per {period} (by <code>{field}</code>), and the share of their "
            f"sentences flagged.</p>{_time_plot(summary, frame, rule)}{note}")


def _shown_documents(summary: CorpusSummary) -> list[KeptDocument]:
    """The documents the page lists: those with the most flagged sentences, then those of kept sentences."""
    documents = {id(d): d for d in summary.top_documents.items()}
    for lists in summary.examples.values():
        for kept in lists.values():
            for example in kept.items():
                documents.setdefault(id(example.document), example.document)
    return list(documents.values())


def _examples_section(summary: CorpusSummary, explanations: dict, documents: list[KeptDocument]) -> str:
    numbers = {id(document): number for number, document in enumerate(documents)}
    parts = ['<h2>Sentences</h2><p class="legend">For each label, the sentences kept '
             "while reading. Red words pushed the label's calibrated score up, blue ones down (hover a word for "
             "its weight); each sentence links to its document.</p>"]
    for j, label in enumerate(summary.labels):
        parts.append(f"<h3>{html.escape(label)} (threshold {summary.thresholds[j]:.3f})</h3>")
        for name in EXAMPLE_LISTS:
            items = []
            for example in summary.examples[label][name].items():
                sentence, number = example.sentence, numbers[id(example.document)]
                explanation = explanations.get((id(sentence), label))
                text = (highlighted_html(explanation, sentence.text, sentence.start) if explanation is not None
                        else html.escape(sentence.text))
                items.append(f'<li><div class="meta">score {sentence.scores[j]:.3f} · '
                             f'<a href="#doc-{number}-s-{sentence.index}">{html.escape(str(example.document.doc_id))}'
                             f", sentence {sentence.index}</a></div>{text}</li>")
            parts.append(f"<h4>{LIST_TITLES[name]}</h4>" +
                         (f'<ol class="examples">{"".join(items)}</ol>' if items else "<p>None.</p>"))
    return "\n".join(parts)


def _documents_section(summary: CorpusSummary, documents: list[KeptDocument]) -> str:
    fields = summary.fields
    header = ["document", *map(html.escape, fields), "sentences", *map(html.escape, summary.labels)]
    rows, bodies = [], []
    for number, document in enumerate(documents):
        values = document.metadata or (None,) * len(fields)
        name = html.escape(str(document.doc_id))
        link = f'<a href="#doc-{number}">{name}</a>' if document.sentences else name
        rows.append([link, *[html.escape(v or "") for v in values], f"{document.total:,}",
                     *[f"{n:,}" for n in document.flagged]])
        if document.sentences:
            bodies.append(_document_body(summary, document, number))
    intro = ("The documents with the most flagged sentences, then the documents of the sentences above; each "
             "links to its sentences." if bodies else "The documents with the most flagged sentences.")
    return f"<h2>Documents</h2><p>{intro}</p>{_table(header, rows)}" + "\n".join(bodies)


def _document_body(summary: CorpusSummary, document: KeptDocument, number: int) -> str:
    items = []
    for sentence in document.sentences:
        badges = "".join(f'<span class="badge">{html.escape(label)} {sentence.scores[summary.labels.index(label)]:.3f}'
                         "</span>" for label in sentence.labels)
        flagged = ' class="flagged"' if sentence.labels else ""
        items.append(f'<li id="doc-{number}-s-{sentence.index}" value="{sentence.index}"{flagged}>'
                     f"{html.escape(sentence.text)}{badges}</li>")
    return (f'<div class="doc" id="doc-{number}"><h3>{html.escape(str(document.doc_id))}</h3>'
            f'<ol start="0">{"".join(items)}</ol></div>')


# ---- the whole report -------------------------------------------------------------------------------
@dataclass
class ReportResult:
    out: Path
    documents: int
    sentences: int
    bytes: int
    seconds: float
    warnings: list[str]


def write_report(scores: str | Path, out: str | Path, *, model=None, by: list[str] = (),
                 date_field: str | None = "date", metadata: list[str | Path] = (), id_field: str | None = None,
                 examples: int = EXAMPLES_PER_LIST, with_explanations: bool = True, title: str | None = None,
                 backend: str = "torch") -> ReportResult:
    """Write the HTML report of a scores file to ``out`` (written whole, then renamed into place).

    ``model``: a loaded model, a directory or a shipped model's name (default: the shipped default); its
    thresholds judge the scores and it explains the kept sentences (``with_explanations=False``: only its
    manifest is read). ``by``: metadata fields to tally by; ``date_field``: the field with each document's date
    (ISO, the first 10 characters read), for the shares over time; both come from ``metadata`` (the file
    ``score`` read) or from extra columns of the scores.
    """
    started = time.perf_counter()
    loaded, name = _model_for_report(model, with_explanations, backend)
    summary = summarize_scores(Path(scores), dict(loaded.thresholds), by=list(by), date_field=date_field,
                               metadata=[Path(p) for p in metadata], id_field=id_field, examples=examples)
    explanations, warnings = explain_examples(summary, loaded) if with_explanations else ({}, [])
    if summary.disagreeing_rows:
        warnings.insert(0, f"{summary.disagreeing_rows:,} rows carry labels that the thresholds of {name} would "
                        "not give their scores: were they scored with another model? (--model)")
    page = render_page(summary, explanations, model_name=name, warnings=warnings,
                       title=title or f"stanceclf report: {Path(scores).name}")
    data = page.encode("utf-8")
    write_atomically(Path(out), data)
    return ReportResult(Path(out), summary.totals.documents, summary.totals.sentences, len(data),
                        time.perf_counter() - started, warnings)


def _model_for_report(model, with_explanations: bool, backend: str):
    """``(a loaded model or, without explanations, its manifest; the name to show)``."""
    from stanceclf.infer.predict import load, model_path
    from stanceclf.model.manifest import ModelManifest

    if isinstance(model, StanceModel):
        return model, str(model.path or "the given model")
    path = model_path(model)
    name = str(model) if model is not None else path.name
    return (load(path, fast=backend), name) if with_explanations else (ModelManifest.read(path), name)


#: The largest difference between a row's score and the explaining model's that passes without a warning.
RESCORE_TOLERANCE = 0.02


def explain_examples(summary: CorpusSummary, model) -> tuple[dict[tuple[int, str], object], list[str]]:
    """Explanations of every kept sentence for the label it was kept for, keyed by ``(id(sentence), label)``,
    and warnings (scores the model does not reproduce)."""
    explanations, warnings, moved = {}, [], 0
    for label, lists in summary.examples.items():
        sentences = list({id(e.sentence): e.sentence for kept in lists.values() for e in kept.items()}.values())
        if not sentences:
            continue
        predictions = [Prediction(s.text, s.start, s.end, s.labels, dict(zip(summary.labels, map(float, s.scores))))
                       for s in sentences]
        j = summary.labels.index(label)
        for sentence, result in zip(sentences, explain(predictions, label=label, model=model)):
            explanations[(id(sentence), label)] = result.explanations[label] if result.explanations else None
            moved += abs(result.scores[label] - float(sentence.scores[j])) > RESCORE_TOLERANCE
    if moved:
        warnings.append(f"{moved} explained sentences score differently (by more than {RESCORE_TOLERANCE}) under "
                        "the explaining model than in the scores: were they scored with another model?")
    return explanations, warnings
