"""The Propaganda Techniques Corpus (PTC, SemEval-2020 task 11) layout.

A folder holds ``article<ID>.txt`` files and, beside each,
``article<ID>.labels.tsv`` with one technique span a line::

    <ID><TAB>Technique<TAB>begin<TAB>end

Offsets are code points into the ``.txt`` as stored, end exclusive. Some
technique names contain commas (``Name_Calling,Labeling``), so only tabs
separate fields. Every article is completely annotated: one without a
``.labels.tsv`` file, or with an empty one, is a document without spans.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from stanceclf.data.documents import AnnotatedDocument
from stanceclf.errors import AnnotationError
from .native import read_texts
from .validation import SpanChecker, input_files

_LABELS_SUFFIX = ".labels.tsv"


def read_ptc(path: str | Path, checker: SpanChecker, *, annotator: str = "ptc") -> Iterator[AnnotatedDocument]:
    """Yield one :class:`AnnotatedDocument` per article of a folder, or for one ``.txt``/``.labels.tsv`` file."""
    path = Path(path)
    files = input_files(path, checker, pattern="*.txt",
                        accepts=lambda p: p.suffix == ".txt" or p.name.endswith(_LABELS_SUFFIX),
                        empty_folder="no article .txt files in this folder",
                        wrong_file="a PTC input is a folder, an article .txt or a .labels.tsv file")
    if path.is_dir():  # labels without their article would otherwise vanish without a word
        for labels_path in sorted(path.glob("*" + _LABELS_SUFFIX)):
            if not _txt_path(labels_path).is_file():
                checker.fail(AnnotationError(f"no article text {_txt_path(labels_path).name} for these labels",
                                             where=str(labels_path)))
    for txt_path in map(_txt_path, files):
        document = _read_article(txt_path, checker, annotator)
        if document is not None:
            yield document


def _txt_path(path: Path) -> Path:
    if path.name.endswith(_LABELS_SUFFIX):
        return path.with_name(path.name[: -len(_LABELS_SUFFIX)] + ".txt")
    return path


def _read_article(txt_path: Path, checker: SpanChecker, annotator: str):
    doc_id = txt_path.stem
    labels_path = txt_path.with_name(doc_id + _LABELS_SUFFIX)
    if not txt_path.is_file():
        checker.fail(AnnotationError(f"article text not found: {txt_path.name}", where=str(txt_path)))
        return None
    contents = read_texts((txt_path, labels_path) if labels_path.is_file() else (txt_path,), checker)
    if contents is None:
        return None
    # PTC's offsets count a leading byte-order mark, which is not part of the text we read.
    (text, shift), rows = contents[0], (contents[1][0] if len(contents) == 2 else "")
    article_number = doc_id.removeprefix("article")
    spans = []
    for line_number, line in enumerate(rows.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        where = f"{labels_path}:{line_number}"
        try:
            article, technique, begin, end = line.split("\t")
            begin, end = int(begin), int(end)
        except ValueError:
            checker.fail(AnnotationError(
                f"malformed line {line[:60]!r}: expected 'ID<TAB>technique<TAB>begin<TAB>end'", where=where))
            continue
        if article != article_number:
            checker.fail(AnnotationError(f"line is for article {article!r}, not {article_number!r}", where=where))
            continue
        span = checker.check(text, begin - shift, end - shift, technique, where=where, annotator=annotator)
        if span is not None:
            spans.append(span)
    return AnnotatedDocument(doc_id, text, sorted(spans), (annotator,), str(txt_path), origin=str(txt_path))
