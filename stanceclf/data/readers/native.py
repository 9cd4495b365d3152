"""The project's native stand-off format (``stanceclf-standoff``, JSONL).

One JSON object per line, one line per completely annotated document::

    {"doc_id": "EN_UA_013617",
     "path": "../../../shared/corpus/semeval2025-en/EN_UA_013617.txt",
     "checksum": "sha256:<hex of the UTF-8 text>",
     "annotators": ["ann-a"],
     "spans": [{"start": 120, "end": 245, "label": "prediction", "annotator": "ann-a"}]}

The text is never embedded when it belongs to someone else: ``path`` names the
text file, relative to the JSONL file's folder (or to ``text_root`` when
given), and ``checksum`` detects a changed file. A document that is one record
of a JSONL corpus (``id`` and ``text`` fields, as ``stanceclf score`` and
``suggest`` read them) is named by the corpus file's ``path`` and its
``record`` id. A record may carry ``text`` inline instead of ``path`` for the
user's own documents. Offsets are Unicode
code points, end exclusive, into the file's text read as UTF-8 without any
newline conversion. A document with no spans is annotated and all-negative.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from stanceclf.data.corpus_inputs import read_corpus_texts
from stanceclf.data.documents import (AnnotatedDocument, decode_document_text, read_document_bytes,
                                      read_document_text, text_checksum, unicode_problem)
from stanceclf.errors import AnnotationError, ChecksumMismatchError, InputFileError, parse_json_text, shown
from stanceclf.files import replaced_atomically
from .validation import SpanChecker

FORMAT_NAME = "stanceclf-standoff"


def read_texts(paths, checker: SpanChecker) -> list[tuple[str, int]] | None:
    """``(text, characters removed at the start)`` of each file by the one document-reading rule
    (:func:`~stanceclf.data.documents.decode_document_text`), or None after reporting the first
    file that cannot be read."""
    texts = []
    for path in paths:
        try:
            texts.append(decode_document_text(read_document_bytes(path), str(path)))
        except InputFileError as error:
            checker.fail(AnnotationError(error.detail, where=error.where))
            return None
    return texts


def read_native(path: str | Path, checker: SpanChecker, *, text_root: str | Path | None = None
                ) -> Iterator[AnnotatedDocument]:
    """Yield :class:`AnnotatedDocument` objects from a native JSONL file."""
    path = Path(path)
    root = Path(text_root) if text_root is not None else path.parent
    corpora: dict[Path, dict[str, str]] = {}  # a corpus file is read once, however many records name it
    for line_number, where, record in iter_jsonl(path, checker):
        document = _document_from_record(record, root, checker, where, corpora)
        if document is not None:
            yield document


def iter_jsonl(path: Path, checker: SpanChecker) -> Iterator[tuple[int, str, object]]:
    """``(line number, where, parsed record)`` for each non-empty line of a JSONL file.

    Lines are decoded one by one, so that a bad byte costs one line and is reported with
    its number (through ``checker.fail``); a byte-order mark before line 1 is accepted.
    """
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                checker.fail(AnnotationError(f"not valid UTF-8: {exc.reason} at byte {exc.start}", where=where))
                continue
            if not line.strip():
                continue
            try:
                record = parse_json_text(line, AnnotationError, where)
            except AnnotationError as error:
                checker.fail(error)
                continue
            yield line_number, where, record


def _document_from_record(record, root: Path, checker: SpanChecker, where: str,
                          corpora: dict[Path, dict[str, str]]):
    if not isinstance(record, dict):
        checker.fail(AnnotationError("a record must be a JSON object", where=where))
        return None
    doc_id = record.get("doc_id")
    if not isinstance(doc_id, str) or not doc_id:
        checker.fail(AnnotationError("missing or empty 'doc_id'", where=where))
        return None
    where = f"{where} (document {shown(doc_id)})"
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str):
            checker.fail(AnnotationError("'text' must be a string", where=where))
            return None
        source = ""
    elif "path" in record:
        if not isinstance(record["path"], str) or not record["path"]:
            checker.fail(AnnotationError("'path' must be a non-empty string", where=where))
            return None
        text_path = root / record["path"]
        if "record" in record:
            text = _corpus_text(text_path, record["record"], checker, where, corpora)
        else:
            try:
                text = read_document_text(text_path)
            except InputFileError as error:
                checker.fail(AnnotationError(f"text file {text_path}: {error.detail}", where=where))
                return None
        if text is None:
            return None
        source = str(record["path"])
    else:
        checker.fail(AnnotationError("a record needs 'text' or 'path'", where=where))
        return None
    problem = unicode_problem(text)
    if problem:  # from a JSON escape: such a text has no UTF-8 bytes to take the checksum of
        checker.fail(AnnotationError(f"the text is {problem}", where=where))
        return None
    expected = record.get("checksum")
    if expected is not None and not isinstance(expected, str):
        checker.fail(AnnotationError(f"'checksum' must be a string, got {shown(expected)}", where=where))
        return None
    if expected is not None and expected != text_checksum(text):
        checker.fail(ChecksumMismatchError(
            f"the text is not the one these annotations were made on: checksum {text_checksum(text)} "
            f"!= recorded {expected}", where=where))
        return None
    spans = []
    raw_spans = record.get("spans", [])
    if not isinstance(raw_spans, list):
        checker.fail(AnnotationError("'spans' must be a list", where=where))
        return None
    for index, raw in enumerate(raw_spans):
        span_where = f"{where} span {index}"
        if not isinstance(raw, dict) or not {"start", "end", "label"} <= raw.keys():
            checker.fail(AnnotationError("a span needs 'start', 'end' and 'label'", where=span_where))
            continue
        annotator = raw.get("annotator") or ""
        if not isinstance(annotator, str):
            checker.fail(AnnotationError(f"a span's 'annotator' must be a name, got {shown(annotator)}",
                                         where=span_where))
            continue
        span = checker.check(text, raw["start"], raw["end"], raw["label"], where=span_where,
                             expected_text=raw.get("text"), annotator=annotator)
        if span is not None:
            spans.append(span)
    annotators = record.get("annotators")
    if annotators is not None and (not isinstance(annotators, list)
                                   or not all(isinstance(a, str) for a in annotators)):
        checker.fail(AnnotationError("'annotators' must be a list of names", where=where))
        return None
    annotators = tuple(annotators or sorted({s.annotator for s in spans if s.annotator}))
    return AnnotatedDocument(doc_id, text, sorted(spans), annotators, source, origin=where)


def _corpus_text(corpus: Path, record_id, checker: SpanChecker, where: str,
                 corpora: dict[Path, dict[str, str]]) -> str | None:
    if not isinstance(record_id, (str, int)) or isinstance(record_id, bool):
        checker.fail(AnnotationError(f"'record' must be a corpus record's id, got {shown(record_id)}", where=where))
        return None
    if corpus not in corpora:
        try:
            corpora[corpus] = read_corpus_texts(corpus)
        except (InputFileError, OSError) as error:
            detail = error.detail if isinstance(error, InputFileError) else (error.strerror or str(error))
            checker.fail(AnnotationError(f"corpus file {corpus}: {detail}", where=where))
            corpora[corpus] = {}
            return None
    text = corpora[corpus].get(str(record_id))
    if text is None:
        checker.fail(AnnotationError(f"no record with id {shown(record_id)} in the corpus file {corpus}",
                                     where=where))
    return text


def write_native(documents, path: str | Path, *, text_paths: dict[str, str | Path] | None = None,
                 corpus_records: dict[str, str | Path] | None = None) -> None:
    """Write documents in the native format.

    Documents whose id is in ``text_paths`` are stored by reference (the path
    is written relative to the output file's folder), and so are those in
    ``corpus_records``, which maps a document id to the JSONL corpus file
    holding the record of that id; the others carry their text inline. The
    file is written to a temporary name and renamed, so a crash never leaves
    half a file.
    """
    path = Path(path)
    with replaced_atomically(path) as tmp:
        _write_records(documents, tmp, path, text_paths or {}, corpus_records or {})


def _write_records(documents, tmp: Path, path: Path, text_paths, corpus_records) -> None:
    def relative(file) -> str:
        return Path(os.path.relpath(Path(file).resolve(), path.parent.resolve())).as_posix()

    with open(tmp, "w", encoding="utf-8") as handle:
        for document in documents:
            record = {"doc_id": document.doc_id}
            if document.doc_id in text_paths:
                record["path"] = relative(text_paths[document.doc_id])
            elif document.doc_id in corpus_records:
                record["path"], record["record"] = relative(corpus_records[document.doc_id]), document.doc_id
            else:
                record["text"] = document.text
            record["checksum"] = document.checksum
            record["annotators"] = list(document.annotators)
            record["spans"] = [
                {"start": s.start, "end": s.end, "label": s.label, "annotator": s.annotator}
                for s in sorted(document.spans)
            ]
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def stored_references(path: str | Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Where a native file takes each document's text from: ``({doc_id: text file}, {doc_id: corpus file})``,
    resolved as :func:`read_native` resolves them (against the file's folder), ready for :func:`write_native`
    to store the same references in a file derived from it; documents with their text inline are in
    neither. A corpus record whose id is not the document's cannot be referenced again (``write_native``
    names a record by the document id), and is an error rather than a text copied inline. Read the file with
    :func:`read_native` first: this checks nothing else."""
    path = Path(path)
    text_paths: dict[str, Path] = {}
    corpus_records: dict[str, Path] = {}
    for _, where, record in iter_jsonl(path, SpanChecker()):
        if not isinstance(record, dict) or not isinstance(record.get("path"), str) or "text" in record:
            continue
        doc_id = str(record.get("doc_id"))
        if "record" not in record:
            text_paths[doc_id] = path.parent / record["path"]
        elif str(record["record"]) == doc_id:
            corpus_records[doc_id] = path.parent / record["path"]
        else:
            raise AnnotationError(f"document {doc_id!r} is the corpus record {record['record']!r}: a derived file "
                                  "names a record by its document id, so give the document its record's id",
                                  where=where)
    return text_paths, corpus_records
