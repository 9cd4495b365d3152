"""doccano sequence-labelling exports (JSONL).

One JSON object per line, one line per document, in either layout::

    {"id": 7, "text": "...", "label": [[0, 5, "LABEL"], ...]}
    {"id": 7, "text": "...", "entities": [{"id": 1, "label": "LABEL", "start_offset": 0, "end_offset": 5}]}

``labels`` is accepted for ``label``. Offsets are code points, end exclusive.
doccano stores no span text, so a wrong offset can only be detected when it is
out of range.

A document's id is ``id`` by the rule of :func:`~stanceclf.data.documents.document_id`
(a string, or an integer written as its decimal string; ``7`` and ``"7"`` are one id,
so two such lines are a duplicate-id error); without ``id``, ``<file stem>-<line number>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from stanceclf.data.documents import AnnotatedDocument, document_id
from stanceclf.errors import AnnotationError, shown
from .native import iter_jsonl
from .validation import TEXT_FIELD_HINT, SpanChecker


def read_doccano(path: str | Path, checker: SpanChecker, *, text_field: str = "text",
                 annotator: str = "doccano") -> Iterator[AnnotatedDocument]:
    """Yield :class:`AnnotatedDocument` objects from a doccano JSONL export."""
    path = Path(path)
    for line_number, _, record in iter_jsonl(path, checker):
        document = _document_from_record(record, path, line_number, checker, text_field, annotator)
        if document is not None:
            yield document


def _document_from_record(record, path: Path, line_number: int, checker: SpanChecker, text_field: str,
                          annotator: str):
    where = f"{path}:{line_number}"
    if not isinstance(record, dict):
        checker.fail(AnnotationError("a line must hold a JSON object", where=where))
        return None
    text = record.get(text_field)
    if not isinstance(text, str):
        checker.fail(AnnotationError(f"no document text under {text_field!r}; " + TEXT_FIELD_HINT,
                                     where=where))
        return None
    try:
        doc_id = document_id(record["id"]) if record.get("id") is not None else f"{path.stem}-{line_number}"
    except ValueError as exc:
        checker.fail(AnnotationError(f"'id' {shown(record['id'])}: {exc}", where=where))
        return None
    where = f"{where} (document {shown(doc_id)})"
    raw_spans = []  # (start, end, label, where)
    for key in ("label", "labels", "entities"):
        value = record.get(key)
        if value is not None and not isinstance(value, list):
            # A whole-document category (text-classification project): no spans, and the document must
            # not pass for one whose sentences are all negative.
            checker.fail(AnnotationError(f"{key!r} must be a list of spans, got {shown(value)}: is this a "
                                         "text-classification export?", where=where))
            return None
    for key in ("label", "labels"):
        for index, item in enumerate(record.get(key) or []):
            item_where = f"{where} {key} {index}"
            if isinstance(item, list) and len(item) == 3:
                raw_spans.append((*item, item_where))
            else:
                # A bare string is a document category from a text-classification project, not a span.
                checker.fail(AnnotationError(f"a span must be [start, end, label], got {shown(item)}",
                                             where=item_where))
    for index, item in enumerate(record.get("entities") or []):
        item_where = f"{where} entities {index}"
        if isinstance(item, dict) and {"start_offset", "end_offset", "label"} <= item.keys():
            raw_spans.append((item["start_offset"], item["end_offset"], item["label"], item_where))
        else:
            checker.fail(AnnotationError("an entity needs 'start_offset', 'end_offset' and 'label'",
                                         where=item_where))
    spans = []
    for start, end, label, item_where in raw_spans:
        if not isinstance(label, str):
            checker.fail(AnnotationError(f"a label must be a string, got {shown(label)}", where=item_where))
            continue
        span = checker.check(text, start, end, label, where=item_where, annotator=annotator)
        if span is not None:
            spans.append(span)
    return AnnotatedDocument(doc_id, text, sorted(spans), (annotator,), origin=where)
