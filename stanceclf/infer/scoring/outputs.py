"""Corpus outputs: one writer per format behind one interface.

A writer appends rows to a partial output, makes them durable on ``commit()`` (returning
the length a resumed run cuts back to), and gives the output its final name on
``finish()``. JSONL and CSV append to one file; Parquet writes one part file per chunk and
merges the parts at the end. Columns and types come from :class:`~stanceclf.infer.results.RowSpec`.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from stanceclf.errors import ReportInputError, ResumeError, ScoringSetupError, shown
from stanceclf.files import TEMPORARY_SUFFIX, replaced_atomically
from stanceclf.infer.results import RowSpec


class StreamWriter:
    """Rows appended to one file; the committed length is the file's byte length."""

    def __init__(self, path: Path, spec: RowSpec):
        self.path, self.spec = path, spec

    def open(self, resume_length: int | None) -> None:
        if resume_length is not None and not self.path.exists():
            raise ResumeError("the progress file names a partial output that is gone; start again with "
                              "--overwrite", where=str(self.path))
        self.handle = open(self.path, "r+b" if resume_length is not None else "wb")
        if resume_length is not None:
            if os.fstat(self.handle.fileno()).st_size < resume_length:  # truncate() would pad it with zeros
                self.handle.close()
                raise ResumeError(f"the partial output is shorter than the {resume_length} bytes its progress file "
                                  "says were written; start again with --overwrite", where=str(self.path))
            self.handle.truncate(resume_length)
            self.handle.seek(resume_length)
        else:
            self.start()

    def start(self) -> None:
        """Whatever a fresh file begins with."""

    def write(self, rows: list[dict]) -> None:
        self.handle.write(self.encode(rows))

    def encode(self, rows: list[dict]) -> bytes:
        raise NotImplementedError

    def commit(self) -> int:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return self.handle.tell()

    def close(self) -> None:
        self.handle.close()

    def finish(self, final: Path) -> None:
        os.replace(self.path, final)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class JsonlWriter(StreamWriter):
    def encode(self, rows: list[dict]) -> bytes:
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


class CsvWriter(StreamWriter):
    """Lists (the ``labels`` column) are written as JSON inside their cell."""

    def start(self) -> None:
        self.write([dict(zip(self.spec.columns, self.spec.columns))])

    def encode(self, rows: list[dict]) -> bytes:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.spec.columns, lineterminator="\n")
        for row in rows:
            writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()})
        return buffer.getvalue().encode("utf-8")


class ParquetWriter:
    """One part file per chunk in a folder; the committed length is the number of parts."""

    def __init__(self, path: Path, spec: RowSpec):
        self.path, self.spec = path, spec

    def open(self, resume_length: int | None) -> None:
        if resume_length:
            missing = [n for n in range(resume_length) if not (self.path / f"part-{n:08d}.parquet").is_file()]
            if missing:  # resuming would lose their rows
                raise ResumeError(f"{len(missing)} of the {resume_length} parts its progress file says were "
                                  f"written are gone (first part-{missing[0]:08d}.parquet); start again with "
                                  "--overwrite", where=str(self.path))
        self.path.mkdir(parents=True, exist_ok=True)
        for part in self.path.glob("part-*.parquet"):
            if resume_length is None or int(part.stem.split("-")[1]) >= resume_length:
                part.unlink()
        for tmp in self.path.glob(f"*{TEMPORARY_SUFFIX}"):  # left by a run killed while writing a part
            tmp.unlink()
        self.parts = resume_length or 0

    def write(self, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with replaced_atomically(self.path / f"part-{self.parts:08d}.parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows, schema=self.spec.arrow_schema()), tmp)
        self.parts += 1

    def commit(self) -> int:
        return self.parts

    def close(self) -> None:
        pass

    def finish(self, final: Path) -> None:
        import pyarrow.parquet as pq

        parts = sorted(self.path.glob("part-*.parquet"))
        schema = self.spec.arrow_schema()
        with replaced_atomically(final) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:  # one part in memory at a time
                writer.write_table(pq.read_table(part, schema=schema))
        shutil.rmtree(self.path)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


OUTPUT_FORMATS = {"jsonl": JsonlWriter, "csv": CsvWriter, "parquet": ParquetWriter}
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def output_format_of(out: Path, fmt: str = "auto") -> str:
    """The output format: named outright, or told by the output's suffix."""
    if fmt == "auto":
        if out.suffix.lower() not in _SUFFIXES:
            raise ScoringSetupError("cannot tell the output format from the name: end it in .jsonl, .csv or "
                                    ".parquet", where=str(out))
        return _SUFFIXES[out.suffix.lower()]
    if fmt not in OUTPUT_FORMATS:
        raise ScoringSetupError(f"unknown output format {fmt!r}: use {', '.join(OUTPUT_FORMATS)}")
    return fmt


def make_writer(fmt: str, partial: Path, spec: RowSpec) -> StreamWriter | ParquetWriter:
    return OUTPUT_FORMATS[fmt](partial, spec)


# ---- reading scores back (for stanceclf report) ---------------------------------------------------
#: Rows read at once from a Parquet scores file.
READ_BATCH = 4096


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
