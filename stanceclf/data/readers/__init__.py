"""Annotation readers: every supported export format into :class:`AnnotatedDocument`.

Use :func:`read_annotations`; ``FORMATS`` lists the format names the CLI accepts.
"""

from __future__ import annotations

from pathlib import Path

from stanceclf.data.documents import AnnotatedDocument
from stanceclf.errors import AnnotationError, shown
from .native import read_native, stored_references, write_native
from .validation import ReadReport, SpanChecker

FORMATS = {
    "native": "stanceclf stand-off JSONL (doc_id, path or text, checksum, spans)",
    "label-studio": "Label Studio JSON export (full export with annotations[].result[], or JSON_MIN)",
    "doccano": "doccano JSONL ('label': [[start, end, label]] or the 'entities' variant)",
    "brat": "brat standoff: folders or pairs of .txt and .ann files (T-lines, discontinuous fragments)",
    "ptc": "Propaganda Techniques Corpus: folders of articleID.txt with articleID.labels.tsv",
}


def _reader(fmt: str):
    if fmt == "native":
        return read_native
    if fmt == "label-studio":
        from .label_studio import read_label_studio

        return read_label_studio
    if fmt == "doccano":
        from .doccano import read_doccano

        return read_doccano
    if fmt == "brat":
        from .brat import read_brat

        return read_brat
    if fmt == "ptc":
        from .ptc import read_ptc

        return read_ptc
    raise AnnotationError(f"unknown annotation format {fmt!r}; supported: {', '.join(FORMATS)}")


def reader_options(fmt: str) -> list[str]:
    """The keyword options a format's reader accepts (``text_field``, ``annotator``, ``text_root``, ...)."""
    import inspect

    parameters = inspect.signature(_reader(fmt)).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def check_reader_options(fmt: str, options: dict) -> None:
    """Refuse options the format's reader does not take, naming the ones it does."""
    unknown = sorted(set(options) - set(reader_options(fmt)))
    if unknown:
        raise AnnotationError(f"the {fmt} reader has no option {', '.join(map(repr, unknown))}; its options: "
                              f"{', '.join(reader_options(fmt)) or 'none'}")


def read_annotations(fmt: str, paths, *, labels=None, label_map=None, strict: bool = True,
                     report: ReadReport | None = None, **options) -> list[AnnotatedDocument]:
    """Read annotated documents from one or more files or folders of format ``fmt``.

    ``labels`` restricts the allowed labels (normally ``schema.label_names``);
    ``label_map`` renames raw labels first, a value of ``None`` dropping that
    label on purpose. In strict mode the first problem raises a numbered
    :class:`~stanceclf.errors.AnnotationError` naming the file and record; in
    lenient mode bad items are skipped and listed in ``report``. Two documents
    with one id (in one input or in two) are an error naming both; so is a
    document whose id, text, labels or annotators are not valid Unicode.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    check_reader_options(fmt, options)
    checker = SpanChecker(labels, label_map, strict=strict, report=report)
    reader = _reader(fmt)
    documents: list[AnnotatedDocument] = []
    seen: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise AnnotationError("input not found", where=str(path))
        for document in reader(path, checker, **options):
            where = document.origin or str(path)
            if document.doc_id in seen:
                checker.fail(AnnotationError(
                    f"document {shown(document.doc_id)} appears twice (first at {seen[document.doc_id]}); "
                    "document ids must be unique across all inputs", where=where))
                continue
            if checker.keep(document):
                seen[document.doc_id] = where
                documents.append(document)
    return documents


__all__ = ["FORMATS", "ReadReport", "SpanChecker", "check_reader_options", "read_annotations", "read_native",
           "reader_options", "stored_references", "write_native"]
