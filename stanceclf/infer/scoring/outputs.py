"""Corpus outputs: one writer per format behind one interface.

A writer appends rows to a partial output, makes them durable on ``commit()`` (returning
the length a resumed run cuts back to), and gives the output its final name on
``finish()``. JSONL and CSV append to one file; Parquet writes one part file per chunk and
merges the parts at the end. Columns and types come from :class:`~stanceclf.infer.results.RowSpec`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

from stanceclf.errors import ResumeError, ScoringSetupError
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
