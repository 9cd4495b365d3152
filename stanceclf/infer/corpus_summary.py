"""A scored corpus summarised while streaming, for ``stanceclf report`` (:mod:`stanceclf.infer.report`).

:func:`summarize_scores` streams the rows of a scores file (JSONL, CSV or Parquet; sentence rows or
``--per-document`` rows, as :class:`~stanceclf.infer.results.RowSpec` defines them) and aggregates them in
bounded memory: counts, label co-occurrence, score histograms, tallies per metadata value and per day,
and a few sentences per label kept in bounded lists (the most confident, the most borderline, and a
uniform random sample of the flagged ones, kept by random priority like a reservoir). A document's rows
are grouped as ``score`` writes them (together, in sentence order), so a document is finished when the
next one starts; only the documents of kept sentences (and the few with the most flagged sentences) stay
in memory.

Metadata: ``score`` output carries none, so it is joined from the scored input (:func:`read_metadata`: the
JSONL, CSV or Parquet file ``score`` read, ids by the same rule as ``score``: the ``id_field`` value, else
FILE:LINE). The join keeps only the fields asked for, per document id, in a dict: memory grows with the
number of documents, not of sentences. A scores file that carries extra columns after the row
specification's (a ``score`` that passes fields through) is read for them directly.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Iterator

import numpy as np

from stanceclf.errors import ReportInputError, ScoringSetupError, shown
from stanceclf.infer.results import RowSpec
from stanceclf.infer.scoring.inputs import INPUT_FORMATS, Fields, input_format_of
from stanceclf.infer.scoring.outputs import output_format_of
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
#: Characters of a metadata value kept (a long value would bloat the page and the join).
MAX_VALUE_CHARS = 200
#: Rows aggregated at once.
READ_BATCH = 4096


# ---- reading scores ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoresLayout:
    """What a scores file holds: its row specification and any extra columns."""

    spec: RowSpec
    extra: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def per_document(self) -> bool:
        return self.spec.per_document


def scores_layout(columns: list[str], where: str) -> ScoresLayout:
    """The :class:`ScoresLayout` of a file with these ``columns``: sentence rows (``score_<label>`` columns)
    or per-document rows (``n_<label>``), in the row specification's order, extra columns after them."""
    per_document = "sentences" in columns and "sentence_index" not in columns
    prefix = "n_" if per_document else "score_"
    labels = tuple(c[len(prefix):] for c in columns if c.startswith(prefix))
    spec = RowSpec(labels, per_document=per_document)
    if not labels or columns[: len(spec.columns)] != spec.columns:
        raise ReportInputError(f"not the output of 'stanceclf score': expected the columns {spec.columns} "
                               f"(then any others), found {columns[:12]}", where=where)
    return ScoresLayout(spec, tuple(columns[len(spec.columns):]))


def _scores_format(path: Path) -> str:
    if not path.is_file():
        raise ReportInputError("scores file not found", where=str(path))
    try:
        return output_format_of(path)
    except ScoringSetupError:
        raise ReportInputError("cannot tell the format of the scores file: it must end in .jsonl, .csv or "
                               ".parquet, as 'stanceclf score' writes it", where=str(path)) from None


def read_scores(path: Path) -> tuple[ScoresLayout, Iterator[tuple[str, dict]]]:
    """The layout of a scores file and its rows, one at a time, each with where it is (FILE:LINE or FILE:row N)."""
    path = Path(path)
    fmt = _scores_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        layout = scores_layout(table.schema_arrow.names, str(path))
        return layout, _parquet_rows(table, path)
    if fmt == "csv":
        handle = open(path, encoding="utf-8-sig", newline="")
        csv.field_size_limit(sys.maxsize)
        reader = csv.reader(handle)
        header = next(reader, [])
        layout = scores_layout(header, f"{path}:1")
        return layout, _csv_rows(handle, reader, header, layout, path)
    handle = open(path, "rb")
    first = handle.readline()
    if not first.strip():
        handle.close()
        raise ReportInputError("the scores file is empty", where=str(path))
    row = _json_row(first, f"{path}:1")
    layout = scores_layout(list(row), f"{path}:1")
    return layout, _jsonl_rows(handle, row, path)


def _json_row(raw: bytes, where: str) -> dict:
    try:
        row = json.loads(raw)
    except ValueError as exc:
        raise ReportInputError(f"not a JSON line: {exc}", where=where) from None
    if not isinstance(row, dict):
        raise ReportInputError("a row must be a JSON object", where=where)
    return row


def _jsonl_rows(handle, first: dict, path: Path) -> Iterator[tuple[str, dict]]:
    with handle:
        yield f"{path}:1", first
        for line_number, raw in enumerate(handle, 2):
            if raw.strip():
                yield f"{path}:{line_number}", _json_row(raw, f"{path}:{line_number}")


def _csv_rows(handle, reader, header: list[str], layout: ScoresLayout, path: Path) -> Iterator[tuple[str, dict]]:
    kinds = dict(layout.spec.typed_columns)
    with handle:
        for row_number, cells in enumerate(reader, 2):
            where = f"{path}:row {row_number}"
            if len(cells) != len(header):
                raise ReportInputError(f"{len(cells)} cells for {len(header)} columns", where=where)
            row = {}
            for name, cell in zip(header, cells):
                kind = kinds.get(name, "string")
                try:
                    row[name] = (json.loads(cell) if kind == "list<string>" else int(cell) if kind == "int64"
                                 else float(cell) if kind == "float64" else cell)
                except ValueError:
                    raise ReportInputError(f"column {name!r} holds {shown(cell)}, not a {kind}", where=where) from None
            yield where, row


def _parquet_rows(table, path: Path) -> Iterator[tuple[str, dict]]:
    number = itertools.count()
    for batch in table.iter_batches(batch_size=READ_BATCH):
        for row in batch.to_pylist():
            yield f"{path}:row {next(number)}", row


# ---- reading metadata ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _MetadataFields(Fields):
    """Takes the ``wanted`` fields of a record where ``score`` takes its text, and its id by ``score``'s rule."""

    wanted: tuple[str, ...] = ()

    def pick(self, record: dict, fallback_id: str, where: str) -> tuple[str, tuple[str | None, ...], str, str | None]:
        doc_id, _, where, error = super().pick({**record, self.text_field: ""}, fallback_id, where)
        return doc_id, tuple(_value(record.get(name)) for name in self.wanted), where, error


def read_metadata(paths: list[Path], fields: list[str], *, id_field: str | None = None) -> dict[str, tuple]:
    """``{doc_id: (value per field)}`` from the inputs ``score`` read (JSONL, CSV or Parquet), streamed; ids by
    ``score``'s rule, so that they meet its rows. A record ``score`` cannot read (no usable id) is passed over:
    it has no rows."""
    found: dict[str, tuple] = {}
    interned: dict[str, str] = {}  # one copy of each value (an outlet's name repeats in every record)
    for path in map(Path, paths):
        if not path.is_file():
            raise ReportInputError("metadata file not found", where=str(path))
        try:
            fmt = input_format_of(path)
        except ScoringSetupError:
            fmt = None
        if fmt not in ("jsonl", "csv", "parquet"):
            raise ReportInputError("metadata must be the JSONL, CSV or Parquet file that 'stanceclf score' "
                                   "read", where=str(path))
        records = (_parquet_metadata(path, fields, id_field) if fmt == "parquet"
                   else INPUT_FORMATS[fmt].records(path, _MetadataFields(id_field=id_field, wanted=tuple(fields))))
        for doc_id, values, _, error in records:
            if error is None:
                found.setdefault(doc_id, tuple(None if v is None else interned.setdefault(v, v) for v in values))
    return found


def _parquet_metadata(path: Path, fields: list[str], id_field: str | None):
    """Parquet records as :class:`~stanceclf.infer.scoring.inputs.ParquetInput` names them, reading only
    the id and metadata columns."""
    import pyarrow.parquet as pq

    from stanceclf.data.documents import document_id

    table = pq.ParquetFile(path)
    name = id_field or "id"
    columns = [c for c in dict.fromkeys([name, *fields]) if c in table.schema_arrow.names]
    number = itertools.count()
    for batch in table.iter_batches(batch_size=READ_BATCH, columns=columns):
        for record in batch.to_pylist():
            row_number = next(number)
            raw = record.get(name)
            try:
                doc_id = f"{path.stem}:{row_number}" if raw is None or raw == "" else document_id(raw)
            except ValueError:
                yield None, None, f"{path}:row {row_number}", "bad id"
                continue
            yield doc_id, tuple(_value(record.get(f)) for f in fields), f"{path}:row {row_number}", None


def _value(raw) -> str | None:
    if raw is None or raw == "":
        return None
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
    return text[:MAX_VALUE_CHARS]


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
