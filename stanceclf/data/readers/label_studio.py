"""Label Studio JSON exports.

Two export types are read, both a JSON list:

* the full ``JSON`` export: one item per task, with ``id``, ``data`` (the document text
  under ``data[text_field]``) and ``annotations``, each annotation holding a ``result`` list
  of items such as ``{"type": "labels", "value": {"start": 0, "end": 5, "text": "Hello",
  "labels": ["X"]}}`` and ``completed_by`` (a user id, or a user object);
* ``JSON_MIN``: one item per *annotation*: the task's data keys, the task ``id``, the
  ``annotator`` and ``annotation_id``, and under the name of the Labels control (usually
  ``label``) a list of ``{"start", "end", "text", "labels"}`` objects. Items with one task
  id are one task's annotations (several annotators) and are grouped back into that task.

So both exports of one project give the same documents. Several annotations of one task
follow the ``annotations`` option: ``"merge"`` (the default) makes one document holding the
union of their spans, each span keeping its annotator; ``"per-annotator"`` makes one document
per annotation, with the id ``<document>@<annotator>`` (for agreement studies).

A document's id is ``data.doc_id`` when the task carries one (tasks written by
``stanceclf suggest`` do), else the task id, both by the rule of
:func:`~stanceclf.data.documents.document_id` (a string, or an integer written as its
decimal string; anything else is an error naming the task). The text is ``data[text_field]``; without
``text_field``, ``text``, or else the one string field of the data that holds every span's
text (Label Studio exports do not carry the labelling config that names it).

Every label of a result gives one span. Offsets are counted in code points by Label Studio
since its fix for astral characters, and in UTF-16 code units by older versions; the ``text``
stored with each result lets :class:`~stanceclf.data.readers.validation.SpanChecker` detect
and repair the latter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stanceclf.data.documents import AnnotatedDocument, document_id, printable
from stanceclf.errors import AnnotationError, parse_json_text, shown
from .validation import TEXT_FIELD_HINT, SpanChecker

ANNOTATION_RULES = ("merge", "per-annotator")
_SPAN_KEYS = {"start", "end", "labels"}
_DEFAULT_TEXT_FIELD = "text"
_DOC_ID_FIELD = "doc_id"
# Keys the JSON_MIN converter adds to each item beside the task's data.
_MIN_META_KEYS = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement", "history",
                  "was_cancelled"}


@dataclass
class _Annotation:
    annotator: str
    where: str
    results: list
    #: Label Studio's annotation id: JSON_MIN lists a task's annotations newest first, the full export by id.
    number: int = 0


@dataclass
class _Task:
    where: str
    doc_id: str
    data: dict
    full: bool
    annotations: list[_Annotation]


def read_label_studio(path: str | Path, checker: SpanChecker, *, text_field: str | None = None,
                      annotator: str | None = None, annotations: str = "merge") -> Iterator[AnnotatedDocument]:
    """Yield :class:`AnnotatedDocument` objects from a Label Studio JSON or JSON_MIN export file.

    ``annotator`` overrides the names derived from the export's user ids; ``annotations`` is
    ``"merge"`` or ``"per-annotator"`` (see the module docstring).
    """
    if annotations not in ANNOTATION_RULES:
        raise AnnotationError(f"the label-studio reader option annotations must be one of {list(ANNOTATION_RULES)}, "
                              f"got {annotations!r}")
    path = Path(path)
    items = _load_items(path, checker)
    if items is None:
        return
    tasks = _tasks(items, path, checker, annotator)
    field = text_field or _detect_text_field(tasks, path, checker)
    if field is None:
        return
    for task in tasks:
        yield from _documents(task, field, checker, annotations, explicit=text_field is not None)


def _load_items(path: Path, checker: SpanChecker) -> list | None:
    try:
        # utf-8-sig: exports re-saved on Windows often start with a byte order mark.
        items = parse_json_text(path.read_text(encoding="utf-8-sig"), AnnotationError, str(path))
    except UnicodeDecodeError as exc:
        checker.fail(AnnotationError(f"not UTF-8: {exc.reason} at byte {exc.start}", where=str(path)))
        return None
    except AnnotationError as error:
        checker.fail(error)
        return None
    if not isinstance(items, list):
        checker.fail(AnnotationError("a Label Studio export must be a JSON list of tasks", where=str(path)))
        return None
    return items


def _tasks(items: list, path: Path, checker: SpanChecker, annotator: str | None) -> list[_Task]:
    """The export's tasks with the annotations that count: JSON_MIN items grouped by task id."""
    tasks: list[_Task] = []
    by_task_id: dict[object, _Task] = {}
    for index, item in enumerate(items):
        where = f"{path} task {index}"
        if not isinstance(item, dict):
            checker.fail(AnnotationError("a task must be a JSON object", where=where))
            continue
        full = isinstance(item.get("data"), dict)  # JSON_MIN may hold a task field named data
        data = item["data"] if full else {k: v for k, v in item.items()
                                          if k not in _MIN_META_KEYS and not _is_span_list(v)}
        raw_id, doc_id = item.get("id", data.get("id")), data.get(_DOC_ID_FIELD)
        problem = _id_problem(raw_id, "the task id")
        if raw_id is not None and not problem:
            where = f"{where} (id {printable(document_id(raw_id))})"
        problem = problem or _id_problem(doc_id, "data.doc_id")
        if problem:
            checker.fail(AnnotationError(problem, where=where))
            continue
        if not full and raw_id is not None and raw_id in by_task_id:
            more = _min_annotation(item, where, checker, annotator)
            if more is not None:
                by_task_id[raw_id].annotations.extend(more)
            continue
        found = _full_annotations(item, where, checker, annotator) if full else _min_annotation(
            item, where, checker, annotator)
        if found is None:
            continue
        doc_id = doc_id if doc_id is not None else raw_id
        task = _Task(where, document_id(doc_id) if doc_id is not None else f"{path.stem}-{index}", data, full,
                     found)
        tasks.append(task)
        if not full and raw_id is not None:
            by_task_id[raw_id] = task
    kept = []
    for task in tasks:
        task.annotations.sort(key=lambda annotation: annotation.number)  # stable: full exports keep their order
        if task.annotations:
            kept.append(task)
        else:
            # Without an annotation the task was never labelled: it is not an all-negative document.
            checker.report.skipped.append(f"{task.where}: no annotation, task not read")
    return kept


def _id_problem(value, what: str) -> str | None:
    """Why a task's id or ``data.doc_id`` (None: absent) cannot name a document, or None."""
    try:
        if value is not None:
            document_id(value)
    except ValueError as exc:
        return f"{what} {shown(value)}: {exc}"
    return None


def _full_annotations(task: dict, where: str, checker: SpanChecker, annotator: str | None
                      ) -> list[_Annotation] | None:
    """The annotations of a full-export task, or None when the task cannot be read (reported)."""
    listed = task.get("annotations") or []
    if not isinstance(listed, list):
        checker.fail(AnnotationError(f"a task's 'annotations' must be a list, got {shown(listed)}", where=where))
        return None
    annotations = []
    for number, annotation in enumerate(listed):
        ann_where = f"{where} annotation {number}"
        if not isinstance(annotation, dict):
            checker.fail(AnnotationError("an annotation must be a JSON object", where=ann_where))
            continue
        if annotation.get("was_cancelled"):
            # A skipped task in the labelling UI: a normal event, not an error, but never silent.
            checker.report.skipped.append(f"{ann_where}: cancelled (skipped) by its annotator, not read")
            continue
        results = annotation.get("result") or []
        name = annotator or _user_name(annotation.get("completed_by"), checker, ann_where)
        if not isinstance(results, list):
            checker.fail(AnnotationError(f"an annotation's 'result' must be a list, got {shown(results)}",
                                         where=ann_where))
        elif name is not None:
            annotations.append(_Annotation(name, ann_where, results))
    return annotations


def _min_annotation(item: dict, where: str, checker: SpanChecker, annotator: str | None
                    ) -> list[_Annotation] | None:
    """A JSON_MIN item is one annotation, or (``annotation_id`` null) a task exported without any; None
    when its annotator cannot be told (reported)."""
    if "annotation_id" in item and item["annotation_id"] is None:
        return []
    results = [{"type": "labels", "value": value} for values in item.values() if _is_span_list(values)
               for value in values]
    number = item.get("annotation_id")
    if isinstance(number, (int, str)) and not isinstance(number, bool):
        where = f"{where} annotation {printable(str(number))}"
    name = annotator or _user_name(item.get("annotator"), checker, where)
    if name is None:
        return None
    return [_Annotation(name, where, results, number if isinstance(number, int) else 0)]


def _detect_text_field(tasks: list[_Task], path: Path, checker: SpanChecker) -> str | None:
    """``text`` where the tasks have it; else the one string field holding every span's text in every task
    (None when none can be told: reported, and the file is not read)."""
    if not tasks or any(_DEFAULT_TEXT_FIELD in task.data for task in tasks):
        return _DEFAULT_TEXT_FIELD
    candidates: set[str] | None = None
    for task in tasks:
        span_texts = [item["value"]["text"] for a in task.annotations for item in a.results
                      if isinstance(item, dict) and isinstance(item.get("value"), dict)
                      and isinstance(item["value"].get("text"), str)]
        fits = {key for key, value in task.data.items() if key != _DOC_ID_FIELD and isinstance(value, str)
                and all(text in value or text in value.replace("\r\n", "\n") for text in span_texts)}
        candidates = fits if candidates is None else candidates & fits
    if len(candidates) == 1:
        return candidates.pop()
    found = f"candidates: {sorted(candidates)}" if candidates else "no string field holds every span's text"
    checker.fail(AnnotationError(f"the tasks have no 'text' field and the document text field cannot be told "
                                 f"({found}); " + TEXT_FIELD_HINT, where=str(path)))
    return None


def _documents(task: _Task, field: str, checker: SpanChecker, rule: str, *, explicit: bool):
    text = task.data.get(field)
    if not isinstance(text, str):
        key = f"data[{field!r}]" if task.full else repr(field)
        strings = sorted(k for k, v in task.data.items() if isinstance(v, str))
        checker.fail(AnnotationError(f"no document text under {key} (string fields: {strings}); "
                                     + ("check the field name" if explicit else TEXT_FIELD_HINT), where=task.where))
        return
    if rule == "per-annotator":
        for annotation in task.annotations:
            yield AnnotatedDocument(f"{task.doc_id}@{annotation.annotator}", text,
                                    sorted(_spans(text, annotation, checker)), (annotation.annotator,),
                                    origin=annotation.where)
        return
    spans = [span for annotation in task.annotations for span in _spans(text, annotation, checker)]
    annotators = tuple(dict.fromkeys(annotation.annotator for annotation in task.annotations))
    yield AnnotatedDocument(task.doc_id, text, sorted(spans), annotators, origin=task.where)


def _spans(text: str, annotation: _Annotation, checker: SpanChecker) -> list:
    spans = []
    for number, item in enumerate(annotation.results):
        item_where = f"{annotation.where} result {number}"
        if not isinstance(item, dict):
            checker.fail(AnnotationError("a result must be a JSON object", where=item_where))
            continue
        if item.get("type", "labels") != "labels":
            continue  # choices, relations, text areas: no text span to read
        value = item.get("value")
        labels = value.get("labels") if isinstance(value, dict) else None
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            checker.fail(AnnotationError("a 'labels' result needs a 'value' with a non-empty list of labels",
                                         where=item_where))
            continue
        for label in labels:
            span = checker.check(text, value.get("start"), value.get("end"), label, where=item_where,
                                 expected_text=value.get("text"), annotator=annotation.annotator)
            if span is not None:
                spans.append(span)
    return spans


def _is_span_list(values) -> bool:
    return (isinstance(values, list) and bool(values)
            and all(isinstance(v, dict) and _SPAN_KEYS <= v.keys() for v in values))


def _user_name(user, checker: SpanChecker, where: str) -> str | None:
    """``completed_by`` is a user id, or a user object in some exports; its email is never used as a name.
    None (reported) when the id is neither a string nor an integer."""
    if isinstance(user, dict):
        user = user.get("id")
    if user is None:
        return "label-studio"
    try:
        return f"label-studio-user-{document_id(user)}"
    except ValueError:
        checker.fail(AnnotationError(f"the annotator's user id must be a string or an integer, got {shown(user)}",
                                     where=where))
        return None
