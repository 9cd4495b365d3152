"""brat standoff annotations: pairs of ``X.txt`` and ``X.ann``.

Each text-bound annotation in the ``.ann`` file is a T-line::

    T1<TAB>Label 0 5;10 15<TAB>span text

Offsets are code points into the ``.txt`` file exactly as stored (CRLF stays
two characters), end exclusive. A discontinuous annotation lists fragments
separated by ``;`` and its text field joins the fragment texts with single
spaces; every fragment becomes its own span with the annotation's label.
Other annotation kinds (attributes, relations, events, normalizations, notes,
equivalences) are not spans and are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from stanceclf.data.documents import AnnotatedDocument
from stanceclf.errors import AnnotationError
from .native import read_texts
from .validation import SpanChecker, input_files

_OTHER_KINDS = ("A", "R", "E", "N", "#", "M", "*")


def read_brat(path: str | Path, checker: SpanChecker, *, annotator: str = "brat") -> Iterator[AnnotatedDocument]:
    """Yield one :class:`AnnotatedDocument` per ``.ann`` file of a folder, or for one ``.ann``/``.txt`` pair."""
    files = input_files(Path(path), checker, pattern="*.ann", accepts=lambda p: p.suffix in (".ann", ".txt"),
                        empty_folder="no .ann files in this folder",
                        wrong_file="a brat input is a folder, an .ann file or a .txt file")
    for ann_path in (file.with_suffix(".ann") for file in files):
        document = _read_pair(ann_path, checker, annotator)
        if document is not None:
            yield document


def _read_pair(ann_path: Path, checker: SpanChecker, annotator: str):
    txt_path = ann_path.with_suffix(".txt")
    for needed in (ann_path, txt_path):
        if not needed.is_file():
            checker.fail(AnnotationError(f"missing file {needed.name}: brat needs both X.txt and X.ann",
                                         where=str(needed)))
            return None
    contents = read_texts((txt_path, ann_path), checker)
    if contents is None:
        return None
    # brat's offsets count a leading byte-order mark, which is not part of the text we read.
    (text, shift), (ann_text, _) = contents
    spans = []
    for line_number, line in enumerate(ann_text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip() or line.startswith(_OTHER_KINDS):
            continue
        where = f"{ann_path}:{line_number}"
        fragments = _parse_t_line(line)
        if fragments is None:
            checker.fail(AnnotationError(
                f"malformed line {line[:60]!r}: expected 'T<n><TAB>Label start end[;start end]...<TAB>text'",
                where=where))
            continue
        label, offsets, expected = fragments
        for number, ((start, end), piece) in enumerate(zip(offsets, expected)):
            fragment_where = where if len(offsets) == 1 else f"{where} fragment {number}"
            span = checker.check(text, start - shift, end - shift, label, where=fragment_where, expected_text=piece,
                                 annotator=annotator)
            if span is not None:
                spans.append(span)
    return AnnotatedDocument(ann_path.stem, text, sorted(spans), (annotator,), str(txt_path), origin=str(ann_path))


def _parse_t_line(line: str):
    """``(label, [(start, end), ...], [expected text or None per fragment])``, or None when malformed."""
    fields = line.split("\t", 2)  # the text field may itself hold tabs
    if len(fields) not in (2, 3) or not fields[0].startswith("T"):
        return None
    label, _, offset_field = fields[1].partition(" ")
    try:
        offsets = [tuple(int(x) for x in fragment.split()) for fragment in offset_field.split(";")]
    except ValueError:
        return None
    if not label or any(len(pair) != 2 for pair in offsets):
        return None
    return label, offsets, _fragment_texts(fields[2] if len(fields) == 3 else None, offsets)


def _fragment_texts(joined: str | None, offsets) -> list:
    """Split the text field into one expected text per fragment, or give None for each when that is unsafe."""
    if joined is None:
        return [None] * len(offsets)
    if len(offsets) == 1:
        return [joined]
    # Fragment texts may contain spaces themselves: cut by the fragment lengths first.
    lengths = [end - start for start, end in offsets]
    starts = [sum(lengths[:i]) + i for i in range(len(lengths))]
    # Reversed fragments have no length to cut by (the checker reports them).
    if (min(lengths) >= 0 and starts[-1] + lengths[-1] == len(joined)
            and all(joined[s - 1] == " " for s in starts[1:])):
        return [joined[s:s + n] for s, n in zip(starts, lengths)]
    pieces = joined.split(" ")
    return pieces if len(pieces) == len(offsets) else [None] * len(offsets)
