"""Label Studio JSON exports.

Two export types are read, both a JSON list of tasks:

* the full ``JSON`` export: each task has ``id``, ``data`` (the document text
  under ``data[text_field]``) and ``annotations``, each annotation holding a
  ``result`` list of items such as ``{"type": "labels", "value": {"start": 0,
  "end": 5, "text": "Hello", "labels": ["X"]}}`` and ``completed_by`` (a user
  id, or a user object);
* ``JSON_MIN``: flat tasks holding the text field and, under the name of the
  Labels control (usually ``label``), a list of ``{"start", "end", "text",
  "labels"}`` objects.

Every label of a result gives one span. Label Studio counts offsets in
JavaScript UTF-16 code units; the ``text`` it stores with each result lets
:class:`~stanceclf.data.readers.validation.SpanChecker` detect and repair that.
"""

from __future__ import annotations

import json
from pathlib import Path

from stanceclf.data.documents import AnnotatedDocument
from stanceclf.errors import AnnotationError
from .validation import SpanChecker

_SPAN_KEYS = {"start", "end", "labels"}


def read_label_studio(path: str | Path, checker: SpanChecker, *, text_field: str = "text",
                      annotator: str | None = None):
    """Yield :class:`AnnotatedDocument` objects from a Label Studio JSON or JSON_MIN export file.

    ``annotator`` overrides the names derived from the export's user ids.
    """
    path = Path(path)
    try:
        # utf-8-sig: exports re-saved on Windows often start with a byte order mark.
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        checker.fail(AnnotationError(f"not UTF-8: {exc.reason} at byte {exc.start}", where=str(path)))
        return
    except json.JSONDecodeError as exc:
        checker.fail(AnnotationError(f"not valid JSON: {exc.msg} (line {exc.lineno})", where=str(path)))
        return
    if not isinstance(tasks, list):
        checker.fail(AnnotationError("a Label Studio export must be a JSON list of tasks", where=str(path)))
        return
    for index, task in enumerate(tasks):
        document = _read_task(task, index, path, checker, text_field, annotator)
        if document is not None:
            yield checker.kept(document)


def _read_task(task, index: int, path: Path, checker: SpanChecker, text_field: str, annotator: str | None):
    where = f"{path} task {index}"
    if not isinstance(task, dict):
        checker.fail(AnnotationError("a task must be a JSON object", where=where))
        return None
    full = isinstance(task.get("data"), dict)
    data = task["data"] if full else task
    raw_id = task.get("id", data.get("id"))
    doc_id = str(raw_id) if raw_id is not None else f"{path.stem}-{index}"
    if raw_id is not None:
        where = f"{where} (id {raw_id})"
    text = data.get(text_field)
    if not isinstance(text, str):
        key = f"data[{text_field!r}]" if full else repr(text_field)
        checker.fail(AnnotationError(f"no document text under {key}; pass text_field= to name the field",
                                     where=where))
        return None

    if full:
        # (annotator name, where prefix, result items) for every annotation that counts.
        annotations = []
        for number, annotation in enumerate(task.get("annotations") or []):
            ann_where = f"{where} annotation {number}"
            if not isinstance(annotation, dict):
                checker.fail(AnnotationError("an annotation must be a JSON object", where=ann_where))
                continue
            if annotation.get("was_cancelled"):
                # A skipped task in the labelling UI: a normal event, not an error, but never silent.
                checker.report.skipped.append(f"{ann_where}: cancelled (skipped) by its annotator, not read")
                continue
            name = annotator or _user_name(annotation.get("completed_by"))
            annotations.append((name, ann_where, annotation.get("result") or []))
        if not annotations:
            # Without an annotation the task was never labelled: it is not an all-negative document.
            checker.report.skipped.append(f"{where}: no annotation, task not read")
            return None
    else:
        items = [
            {"type": "labels", "value": value}
            for key, values in data.items()
            if key != text_field and _is_span_list(values)
            for value in values
        ]
        annotations = [(annotator or _user_name(data.get("annotator")), where, items)]

    spans = []
    for name, ann_where, results in annotations:
        for number, item in enumerate(results):
            item_where = f"{ann_where} result {number}"
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
                                     expected_text=value.get("text"), annotator=name)
                if span is not None:
                    spans.append(span)
    annotators = tuple(dict.fromkeys(name for name, _, _ in annotations))
    return AnnotatedDocument(doc_id, text, sorted(spans), annotators)


def _is_span_list(values) -> bool:
    return (isinstance(values, list) and bool(values)
            and all(isinstance(v, dict) and _SPAN_KEYS <= v.keys() for v in values))


def _user_name(user) -> str:
    """``completed_by`` is a user id, or a user object in some exports; its email is never used as a name."""
    if isinstance(user, dict):
        user = user.get("id")
    return f"label-studio-user-{user}" if user is not None else "label-studio"
