"""A scored corpus summarised while streaming, for ``stanceclf report`` (:mod:`stanceclf.infer.report`).

:func:`summarize_scores` streams the rows of a scores file (JSONL, CSV or Parquet; sentence rows or
``--per-document`` rows, as :class:`~stanceclf.infer.results.RowSpec` defines them) and aggregates them in
bounded memory: counts, label co-occurrence, score histograms, tallies per metadata value and per day,
and a few sentences per label kept in bounded lists (the most confident, the most borderline, and a
uniform random sample of the flagged ones, kept by random priority like a reservoir). A document's rows
are grouped as ``score`` writes them (together, in sentence order), so a document is finished when the
next one starts; only the documents of kept sentences (and the few with the most flagged sentences) stay
in memory.

Scores files are read by :func:`~stanceclf.infer.scoring.outputs.read_scores`, beside their writers.
Metadata: ``score`` output carries none, so it is joined from the scored input
(:func:`~stanceclf.data.corpus_inputs.read_metadata`: the JSONL, CSV or Parquet file ``score`` read, ids by
the same rule as ``score``: the ``id_field`` value, else FILE:LINE). The join keeps only the fields asked
for, per document id, in a dict: memory grows with the number of documents, not of sentences. A scores file that carries extra columns after the row
specification's (a ``score`` that passes fields through) is read for them directly.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from stanceclf.errors import ReportInputError, shown
from stanceclf.data.corpus_inputs import metadata_value as _value, read_metadata
from stanceclf.infer.scoring.outputs import READ_BATCH, ScoresLayout, read_scores
from stanceclf.model.decision import decide

#: Sentences kept per label in each list (most confident, most borderline, random flagged sample).
EXAMPLES_PER_LIST = 5
#: Documents with the most flagged sentences listed in the page, with their sentences.
TOP_DOCUMENTS = 12
#: Bins of the score histograms, over [0, 1].
HISTOGRAM_BINS = 50
#: Distinct values of a metadata field tallied; later new values go to :data:`OTHER_VALUES`.
MAX_GROUP_VALUES = 5000
OTHER_VALUES = "(other values)"
MISSING_VALUE = "(none)"


# ---- aggregating -----------------------------------------------------------------------------------
class Kept:
    """The ``size`` items of highest priority offered so far, the earlier offered first among equals (a heap:
    memory stays ``size`` items)."""

    def __init__(self, size: int):
        self.size = size
        self._heap: list = []
        self._order = itertools.count()

    @property
    def floor(self) -> float:
        """The priority an item must beat to be kept now."""
        return self._heap[0][0] if len(self._heap) >= self.size else -np.inf

    def offer(self, priority: float, item) -> None:
        # (priority, -order): among equals the latest offered is the smallest, the first to go.
        entry = (priority, -next(self._order), item)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
        elif priority > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def items(self) -> list:
        """Kept items, the highest priority first, then the earliest offered."""
        return [item for _, _, item in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]


@dataclass
class Tally:
    """Counts over a set of documents: sentences and documents, per label flagged."""

    labels: int
    documents: int = 0
    sentences: int = 0
    label_sentences: np.ndarray = None
    label_documents: np.ndarray = None

    def __post_init__(self):
        self.label_sentences = np.zeros(self.labels, dtype=np.int64)
        self.label_documents = np.zeros(self.labels, dtype=np.int64)

    def add(self, sentences: int, flagged: np.ndarray) -> None:
        """One document of ``sentences`` sentences, ``flagged[j]`` of them with label ``j``."""
        self.documents += 1
        self.sentences += sentences
        self.label_sentences += flagged
        self.label_documents += flagged > 0

    def sentence_share(self) -> np.ndarray:
        return self.label_sentences / max(self.sentences, 1)

    def document_share(self) -> np.ndarray:
        return self.label_documents / max(self.documents, 1)


@dataclass
class KeptSentence:
    index: int
    start: int
    end: int
    text: str
    labels: list[str]
    scores: np.ndarray


@dataclass
class KeptDocument:
    """A document whose sentences the page shows (kept while one of its sentences or itself is kept)."""

    doc_id: str
    metadata: tuple | None
    sentences: list[KeptSentence] = field(default_factory=list)
    flagged: np.ndarray | None = None
    total: int = 0


@dataclass
class Example:
    document: KeptDocument
    sentence: KeptSentence


EXAMPLE_LISTS = ("confident", "borderline", "sample")


@dataclass
class CorpusSummary:
    """Everything the page shows, aggregated while streaming."""

    source: str
    layout: ScoresLayout
    thresholds: np.ndarray
    fields: list[str]
    by: list[str]
    date_field: str | None
    totals: Tally = None
    cooccurrence_sentences: np.ndarray = None
    cooccurrence_documents: np.ndarray = None
    histograms: np.ndarray = None
    #: Rows whose labels are not what the thresholds decide for their scores.
    disagreeing_rows: int = 0
    groups: dict[str, dict[str, Tally]] = field(default_factory=dict)
    days: dict[int, Tally] = field(default_factory=dict)
    documents_without_metadata: int = 0
    undated_documents: int = 0
    unreadable_dates: int = 0
    unreadable_date_example: str | None = None
    examples: dict[str, dict[str, Kept]] = field(default_factory=dict)
    top_documents: Kept = None
    seconds: float = 0.0

    def __post_init__(self):
        n = len(self.layout.labels)
        self.totals = Tally(n)
        self.cooccurrence_sentences = np.zeros((n, n), dtype=np.int64)
        self.cooccurrence_documents = np.zeros((n, n), dtype=np.int64)
        self.histograms = np.zeros((n, HISTOGRAM_BINS), dtype=np.int64)
        self.groups = {name: {} for name in self.by}
        self.top_documents = Kept(TOP_DOCUMENTS)

    @property
    def labels(self) -> list[str]:
        return self.layout.labels

    def finish_document(self, document: KeptDocument, sentences: int, flagged: np.ndarray) -> None:
        """Count one whole document into every tally."""
        self.totals.add(sentences, flagged)
        hits = flagged > 0
        self.cooccurrence_documents += np.outer(hits, hits)
        values = document.metadata
        if values is None:
            self.documents_without_metadata += bool(self.fields)
            values = (None,) * len(self.fields)
        for name, value in zip(self.by, values):
            self._group(name, value).add(sentences, flagged)
        if self.date_field is not None:
            day = self._day(values[-1])
            if day is not None:
                self.days.setdefault(day, Tally(len(self.labels))).add(sentences, flagged)
        document.flagged, document.total = flagged, sentences
        if flagged.sum():
            self.top_documents.offer(float(flagged.sum()), document)

    def _group(self, name: str, value: str | None) -> Tally:
        groups = self.groups[name]
        key = MISSING_VALUE if value is None else value
        if key not in groups and len(groups) >= MAX_GROUP_VALUES:
            key = OTHER_VALUES
        if key not in groups:
            groups[key] = Tally(len(self.labels))
        return groups[key]

    def _day(self, value: str | None) -> int | None:
        if value is None:
            self.undated_documents += 1
            return None
        try:
            return date.fromisoformat(value[:10]).toordinal()
        except ValueError:
            self.unreadable_dates += 1
            self.unreadable_date_example = self.unreadable_date_example or value
            return None


def summarize_scores(path: Path, thresholds: dict[str, float], *, by: list[str] = (), date_field: str | None = None,
                     metadata: list[Path] = (), id_field: str | None = None, examples: int = EXAMPLES_PER_LIST,
                     seed: int = 0) -> CorpusSummary:
    """Stream a scores file into a :class:`CorpusSummary` (see the module docstring)."""
    started = time.perf_counter()
    layout, rows = read_scores(Path(path))
    labels = layout.labels
    if sorted(labels) != sorted(thresholds):
        raise ReportInputError(f"the scores have the labels {labels}, the model {sorted(thresholds)}: name the "
                               "model that scored them with --model", where=str(path))
    fields = [*by, *([date_field] if date_field else [])]
    joined = read_metadata(list(metadata), fields, id_field=id_field) if metadata and fields else {}
    if fields and not metadata:
        missing = [name for name in fields if name not in layout.extra]
        if by and missing:
            raise ReportInputError(f"the scores carry no column {missing[0]!r}: 'stanceclf score' writes no "
                                   "metadata, so name the file it scored with --metadata", where=str(path))
        if missing:  # a date field by default: none here, so no time section
            fields, date_field = [*by], None
    summary = CorpusSummary(str(path), layout, np.array([thresholds[label] for label in labels]), fields,
                            list(by), date_field)
    summary.examples = {label: {name: Kept(examples) for name in EXAMPLE_LISTS} for label in labels}

    def metadata_of(doc_id: str, row: dict) -> tuple | None:
        if not fields:
            return None
        return joined.get(doc_id) if metadata else tuple(_value(row.get(name)) for name in fields)

    consume = _DocumentRows if layout.per_document else _SentenceRows
    consume(summary, metadata_of, np.random.default_rng(seed)).run(rows)
    summary.seconds = time.perf_counter() - started
    return summary


class _SentenceRows:
    """Sentence rows into a summary: counts vectorised per batch, documents and kept sentences row by row.
    The current document's sentences are held until the next document starts; a document stays in memory
    after that only while a kept sentence (or the list of top documents) refers to it."""

    def __init__(self, summary: CorpusSummary, metadata_of, rng):
        self.summary, self.metadata_of, self.rng = summary, metadata_of, rng
        self.labels = summary.labels
        self.score_columns = [f"score_{label}" for label in self.labels]
        self.document: KeptDocument | None = None
        self.flagged = np.zeros(len(self.labels), dtype=np.int64)
        self.count = 0
        self.edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)

    def run(self, rows) -> None:
        while batch := list(itertools.islice(rows, READ_BATCH)):
            self.batch(batch)
        self.close_document()

    def batch(self, batch: list[tuple[str, dict]]) -> None:
        summary = self.summary
        scores, hits = self.arrays(batch)
        summary.disagreeing_rows += int((hits != decide(scores, summary.thresholds)).any(axis=1).sum())
        summary.cooccurrence_sentences += hits.T.astype(np.int64) @ hits.astype(np.int64)
        for j in range(len(self.labels)):
            summary.histograms[j] += np.histogram(scores[:, j], bins=self.edges)[0]
        priority = self.priorities(scores, hits)  # (rows, labels, lists)
        lists = [[summary.examples[label][name] for name in EXAMPLE_LISTS] for label in self.labels]
        floors = np.array([[kept.floor for kept in row] for row in lists])
        # Floors only rise within a batch: rows below the floors of its start can be passed over at once.
        candidates = (priority > floors[None]).any(axis=(1, 2))
        for i, (where, row) in enumerate(batch):
            self.follow(where, row, hits[i])
            sentence = KeptSentence(row["sentence_index"], row.get("start"), row.get("end"), row["text"],
                                    list(row["labels"]), scores[i].copy())
            self.document.sentences.append(sentence)
            if candidates[i]:
                for j, k in zip(*np.nonzero(priority[i] > floors)):
                    lists[j][k].offer(float(priority[i, j, k]), Example(self.document, sentence))

    def priorities(self, scores: np.ndarray, hits: np.ndarray) -> np.ndarray:
        """``(rows, labels, lists)``: each row's priority in each label's lists, in :data:`EXAMPLE_LISTS`
        order (-inf: not a candidate). The sample's random priority keeps a uniform sample of the flagged."""
        by_list = {"confident": np.where(hits, scores, -np.inf),
                   "borderline": -np.abs(scores - self.summary.thresholds),
                   "sample": np.where(hits, self.rng.random(scores.shape), -np.inf)}
        return np.stack([by_list[name] for name in EXAMPLE_LISTS], axis=-1)

    def arrays(self, batch) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, hits)`` of a batch, each row checked: scores in [0, 1], labels of this model, a text."""
        try:
            scores = np.array([[row[c] for c in self.score_columns] for _, row in batch], dtype=np.float64)
            hits = np.array([[label in row["labels"] for label in self.labels] for _, row in batch], dtype=bool)
            valid = (np.all((scores >= 0) & (scores <= 1))
                     and all(isinstance(row["labels"], list) and len(row["labels"]) == n and
                             isinstance(row["text"], str) and isinstance(row["sentence_index"], int)
                             for (_, row), n in zip(batch, hits.sum(axis=1))))
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            self.raise_first_bad_row(batch)
        return scores, hits

    def raise_first_bad_row(self, batch) -> None:
        for where, row in batch:
            for column in self.score_columns:
                value = row.get(column)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise ReportInputError(f"{column} is {shown(value)}, not a score in [0, 1]", where=where)
            labels = row.get("labels")
            if (not isinstance(labels, list) or len(set(labels)) != len(labels)
                    or any(label not in self.labels for label in labels)):
                raise ReportInputError(f"labels is {shown(labels)}, not a list of distinct labels of {self.labels}",
                                       where=where)
            if not isinstance(row.get("text"), str) or not isinstance(row.get("sentence_index"), int):
                raise ReportInputError("a sentence row needs a string 'text' and an integer 'sentence_index'",
                                       where=where)
        raise AssertionError("a batch failed its checks, yet every row passes them")

    def follow(self, where: str, row: dict, hits: np.ndarray) -> None:
        """Count a row into its document; a new document id finishes the previous document."""
        doc_id, index = row.get("doc_id"), row["sentence_index"]
        if self.document is None or doc_id != self.document.doc_id:
            self.close_document()
            if index != 0:
                raise ReportInputError(f"document {shown(doc_id)} starts at sentence {index}: its rows are not "
                                       "together and in order, as 'stanceclf score' writes them", where=where)
            self.document = KeptDocument(doc_id, self.metadata_of(str(doc_id), row))
        elif index != self.count:
            raise ReportInputError(f"sentence {index} of document {shown(doc_id)} follows sentence "
                                   f"{self.count - 1}: rows must be in order, as 'stanceclf score' writes them",
                                   where=where)
        self.flagged += hits
        self.count += 1

    def close_document(self) -> None:
        if self.document is not None:
            self.summary.finish_document(self.document, self.count, self.flagged)
        self.document, self.flagged, self.count = None, np.zeros(len(self.labels), dtype=np.int64), 0


class _DocumentRows:
    """``--per-document`` rows into a summary: counts only (the rows carry no sentences or scores)."""

    def __init__(self, summary: CorpusSummary, metadata_of, rng):
        self.summary, self.metadata_of = summary, metadata_of

    def run(self, rows) -> None:
        counts = [f"n_{label}" for label in self.summary.labels]
        for where, row in rows:
            try:
                flagged = np.array([row[c] for c in counts], dtype=np.int64)
                sentences = int(row["sentences"])
            except (KeyError, TypeError, ValueError):
                raise ReportInputError(f"a per-document row needs integer columns sentences and {counts}",
                                       where=where) from None
            if sentences < 0 or (flagged < 0).any() or (flagged > sentences).any():
                raise ReportInputError(f"counts {flagged.tolist()} do not fit {sentences} sentences", where=where)
            doc_id = str(row.get("doc_id"))
            self.summary.finish_document(KeptDocument(doc_id, self.metadata_of(doc_id, row)), sentences, flagged)
