"""Corpus inputs: folders of text files, JSONL, CSV and Parquet, read record by record.

Each format is one reader class behind the same interface; :func:`iter_records` numbers
the records of all inputs in one fixed order, so that a resumed run can skip exactly the
records an interrupted one finished.

Document ids: a text file's id is its path below the folder given, without its suffix, unless
that would give two files of the folder one id (:func:`text_file_ids`); a structured record's
id is its ``id`` (or ``--id-field``) value by the rule of
:func:`~stanceclf.data.documents.document_id`: a string as it is, an integer as its decimal
string, anything else a bad record. Ids must be unique across all inputs of a run: a repeated
one (``"1"`` and ``1`` included) is a bad record naming both records.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from stanceclf.data.documents import decode_document_text, document_id, printable, read_document_bytes, unicode_problem
from stanceclf.errors import (InputFileError, InputRecordError, ReportInputError, ScoringSetupError, parse_json_text,
                              shown)

#: The suffixes of the text files a folder input holds, compared case-insensitively.
TEXT_SUFFIXES = (".txt", ".text")


def text_files(folder: Path) -> list[Path]:
    """The text files a folder input reads, in order: the one selection rule (reading and resume)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())


def text_file_ids(files: list[Path], base: Path) -> list[str]:
    """The document ids of a folder input's ``files``: each file's path below ``base``, without its suffix
    (``news/a.txt`` -> ``news/a``), so that a folder of distinct names keeps its short ids. A file keeps its
    suffix when dropping it would give it another file's id: ``a.txt``, ``a.text`` and ``a.TXT`` are
    ``a.txt``, ``a.text`` and ``a.TXT``, and ``a.txt.txt`` beside ``a.txt`` is ``a.txt.txt``. Every file
    of one input thus has an id of its own; two inputs may still share one (a bad record, see the module)."""
    paths = [file.relative_to(base).as_posix() for file in files]
    stems = [file.relative_to(base).with_suffix("").as_posix() for file in files]
    shared = Counter(stems)
    taken = set(paths)
    return [stem if shared[stem] == 1 and stem not in taken else path for stem, path in zip(stems, paths)]


#: What a format's reader yields per record: ``(doc_id, text as read, where, why it is unusable or None)``.
RawRecord = tuple[str, object, str, str | None]


@dataclass
class InputRecord:
    """One input document, or the reason it cannot be scored (``error``)."""

    number: int
    doc_id: str
    text: str | None
    where: str
    error: str | None = None


@dataclass(frozen=True)
class Fields:
    """Which fields of a structured record hold the id and the text."""

    id_field: str | None = None
    text_field: str = "text"

    def columns(self) -> list[str]:
        """The columns :meth:`pick` reads (a columnar input reads only these)."""
        return [self.id_field or "id", self.text_field]

    def pick(self, record: dict, fallback_id: str, where: str) -> RawRecord:
        """``(doc_id, text, where, error)``. Without an explicit ``id_field``, a record without ``id``
        (or with null or ``""``, as an empty CSV cell gives) is named FILE:LINE; with one, a record that
        lacks it is a bad record. An id that is neither a string nor an integer (``true``, ``1.5``,
        ``["f"]``) is a bad record; an integer is written as its decimal string."""
        name = self.id_field or "id"
        raw = record.get(name)
        if (raw is None or raw == "") and self.id_field is not None:
            return fallback_id, None, where, f"missing id field {self.id_field!r} (fields: {sorted(record)[:10]})"
        try:
            doc_id = fallback_id if raw is None or raw == "" else document_id(raw)
        except ValueError as exc:
            return fallback_id, None, where, f"id field {name!r}: {exc} ({shown(raw)})"
        if self.text_field not in record:
            return doc_id, None, where, f"missing field {self.text_field!r} (fields: {sorted(record)[:10]})"
        return doc_id, record[self.text_field], where, None


class TextFolderInput:
    """A folder of text files (or one file): the id is the path below the folder, without its suffix
    unless two files would share it (:func:`text_file_ids`)."""

    def files(self, path: Path) -> list[Path]:
        return text_files(path) if path.is_dir() else [path]

    def records(self, path: Path, fields: Fields) -> Iterator[RawRecord]:
        base = path if path.is_dir() else path.parent
        files = self.files(path)
        for file, doc_id in zip(files, text_file_ids(files, base)):
            try:
                text, error = decode_document_text(read_document_bytes(file), str(file))[0], None
            except InputFileError as exc:
                text, error = None, exc.detail
            yield doc_id, text, str(file), error


class JsonlInput:
    def files(self, path: Path) -> list[Path]:
        return [path]

    def records(self, path: Path, fields: Fields) -> Iterator[RawRecord]:
        with open(path, "rb") as handle:
            for line_number, raw in enumerate(handle, 1):
                where, fallback = f"{path}:{line_number}", f"{path.stem}:{line_number}"
                record, error = _parse_json_line(raw, line_number)
                if error is not None:
                    yield _salvage_id(raw, fields) or fallback, None, where, error
                else:
                    yield fields.pick(record, fallback, where)


def read_corpus_texts(path: str | Path, ids: set[str] | None = None, *, id_field: str | None = None,
                      text_field: str = "text") -> dict[str, str]:
    """``{id: text}`` of the records of a JSONL corpus (one document a line), only those in ``ids`` when given:
    annotations of a document that lives in such a file name the file and the record's id instead of copying
    its text. Records are read and named exactly as ``stanceclf score`` and ``suggest`` read them
    (:class:`JsonlInput`), the first record of an id winning. A record those commands would count as bad (not
    JSON, no text, an unusable id) names nothing and is passed over here: an annotation that refers to it
    meets "no record with that id" where it is read."""
    texts: dict[str, str] = {}
    for doc_id, text, _, error in JsonlInput().records(Path(path), Fields(id_field, text_field)):
        if error is None and isinstance(text, str) and (ids is None or doc_id in ids):
            texts.setdefault(doc_id, text)
    return texts


def _parse_json_line(raw: bytes, line_number: int):
    try:
        line = decode_document_text(raw, "") [0] if line_number == 1 else raw.decode("utf-8")
    except (InputFileError, UnicodeDecodeError) as exc:
        reason = exc.detail if isinstance(exc, InputFileError) else f"not valid UTF-8: {exc.reason} at byte {exc.start}"
        return None, reason
    if not line.strip():
        return None, "empty line"
    try:
        record = parse_json_text(line, InputRecordError, "")
    except InputRecordError as error:
        return None, error.detail
    if not isinstance(record, dict):
        return None, "a record must be a JSON object"
    return record, None


def _salvage_id(raw: bytes, fields: Fields) -> str | None:
    """The id of a record whose text is unusable, so that the error message can name it."""
    try:
        record = parse_json_text(raw.decode("utf-8", errors="replace"), InputRecordError, "")
        return document_id(record.get(fields.id_field or "id")) if isinstance(record, dict) else None
    except (InputRecordError, ValueError):
        return None


class CsvInput:
    def files(self, path: Path) -> list[Path]:
        return [path]

    def records(self, path: Path, fields: Fields) -> Iterator[RawRecord]:
        csv.field_size_limit(sys.maxsize)
        # Bad bytes become lone surrogates here and are reported per row instead of failing the file.
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            reader = csv.DictReader(handle)
            for row_number, row in enumerate(reader, 2):  # row 1 is the header
                where, fallback = f"{path}:row {row_number}", f"{path.stem}:{row_number}"
                value = row.get(fields.text_field)
                if isinstance(value, str) and unicode_problem(value):
                    yield row.get(fields.id_field or "id") or fallback, None, where, "not valid UTF-8"
                    continue
                yield fields.pick(row, fallback, where)


class ParquetInput:
    def files(self, path: Path) -> list[Path]:
        return [path]

    def records(self, path: Path, fields: Fields) -> Iterator[RawRecord]:
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        columns = [c for c in dict.fromkeys(fields.columns()) if c in table.schema_arrow.names]
        row_number = 0
        for batch in table.iter_batches(batch_size=1024, columns=columns or None):
            for record in batch.to_pylist():
                yield fields.pick(record, f"{path.stem}:{row_number}", f"{path}:row {row_number}")
                row_number += 1


INPUT_FORMATS = {"txt": TextFolderInput(), "jsonl": JsonlInput(), "csv": CsvInput(), "parquet": ParquetInput()}
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
             **{suffix: "txt" for suffix in TEXT_SUFFIXES}}


def input_format_of(path: Path, fmt: str = "auto") -> str:
    """The format of one input: named outright, or told by a folder or a file suffix."""
    if fmt != "auto":
        if fmt not in INPUT_FORMATS:
            raise ScoringSetupError(f"unknown input format {fmt!r}: use auto, {', '.join(INPUT_FORMATS)}")
        return fmt
    if path.is_dir():
        return "txt"
    if path.suffix.lower() not in _SUFFIXES:
        raise ScoringSetupError(f"cannot tell the input format from {path.suffix!r}; pass --input-format",
                                where=str(path))
    return _SUFFIXES[path.suffix.lower()]


def input_files(paths: list[Path], fmt: str = "auto") -> list[Path]:
    """Every file the inputs are read from (what a resumed run must find unchanged)."""
    return [file for path in paths for file in INPUT_FORMATS[input_format_of(path, fmt)].files(path)]


def check_inputs(paths: list[Path], fmt: str = "auto") -> None:
    """Refuse missing inputs, unknown formats and folders without text files, before anything is written."""
    for path in paths:
        if not path.exists():
            raise ScoringSetupError("input not found", where=str(path))
        kind = input_format_of(path, fmt)
        if kind == "txt" and path.is_dir() and not text_files(path):
            raise ScoringSetupError(f"no text files here (looked for {', '.join(TEXT_SUFFIXES)} in any case, "
                                    "in subfolders too)", where=str(path))


def iter_records(paths: list[Path], fmt: str = "auto", *, fields: Fields = Fields(),
                 max_chars: int = 1_000_000) -> Iterator[InputRecord]:
    """Yield every input record in a fixed order, numbered from 0 across all inputs."""
    number = 0
    for path in map(Path, paths):
        for doc_id, text, where, error in INPUT_FORMATS[input_format_of(path, fmt)].records(path, fields):
            if unicode_problem(str(doc_id)) or unicode_problem(where):
                # An id from bad bytes (a CSV cell, a file name) cannot be written to any output as it is.
                doc_id, where = printable(str(doc_id)), printable(where)
                error = error or f"the document id {doc_id!r} is not valid Unicode"
            if error is None:
                error = text_problem(text, max_chars)
            yield InputRecord(number, doc_id, text if error is None else None, where, error)
            number += 1


def text_problem(text, max_chars: int) -> str | None:
    """Why a record's text cannot be scored, or None."""
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not a string"
    if not text.strip():
        return "text is empty or whitespace only"
    if unicode_problem(text):
        return f"text is {unicode_problem(text)}"
    if len(text) > max_chars:
        return f"text has {len(text):,} characters, above the limit of {max_chars:,} (raise --max-chars to score it)"
    return None


# ---- metadata of the scored documents (for stanceclf report) --------------------------------------
#: Characters of a metadata value kept (a long value would bloat a report and its join).
MAX_VALUE_CHARS = 200


@dataclass(frozen=True)
class _MetadataFields(Fields):
    """Takes the ``wanted`` fields of a record where ``score`` takes its text, and its id by ``score``'s rule."""

    wanted: tuple[str, ...] = ()

    def columns(self) -> list[str]:
        return [self.id_field or "id", *self.wanted]

    def pick(self, record: dict, fallback_id: str, where: str) -> tuple[str, tuple[str | None, ...], str, str | None]:
        doc_id, _, where, error = super().pick({**record, self.text_field: ""}, fallback_id, where)
        return doc_id, tuple(metadata_value(record.get(name)) for name in self.wanted), where, error


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
        records = INPUT_FORMATS[fmt].records(path, _MetadataFields(id_field=id_field, wanted=tuple(fields)))
        for doc_id, values, _, error in records:
            if error is None:
                found.setdefault(doc_id, tuple(None if v is None else interned.setdefault(v, v) for v in values))
    return found


def metadata_value(raw) -> str | None:
    """A metadata field's value as text (JSON for other types), cut to :data:`MAX_VALUE_CHARS`; None when absent."""
    if raw is None or raw == "":
        return None
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
    return text[:MAX_VALUE_CHARS]
