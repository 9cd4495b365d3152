"""Checks shared by every annotation reader.

A reader turns each raw span into a :class:`~stanceclf.data.documents.Span` through
:meth:`SpanChecker.check`, which validates the offsets against the document
text, repairs the two common export quirks it can prove (offsets counted in
UTF-16 code units, offsets counted on LF text of a CRLF document), maps the
label, and either raises (strict mode) or records the problem in a
:class:`ReadReport` and skips the item (lenient mode). Nothing is dropped
without a line in the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stanceclf.data.documents import AnnotatedDocument, Span, unicode_problem
from stanceclf.errors import AnnotationError, OffsetError, UnknownLabelError, shown

#: How a user names the field that holds the document text (readers with a ``text_field`` option).
TEXT_FIELD_HINT = ("name it with --reader-option text_field=NAME (build-dataset) or reader_options = "
                   '{text_field = "NAME"} in the recipe\'s [data]')


@dataclass
class ReadReport:
    """What a read did: documents and spans kept, items skipped and why, repairs made."""

    documents: int = 0
    spans: int = 0
    skipped: list[str] = field(default_factory=list)
    repaired: Counter = field(default_factory=Counter)
    mapped_out: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        lines = [f"read {self.documents} documents with {self.spans} spans"]
        for kind, n in sorted(self.repaired.items()):
            lines.append(f"repaired {n} spans: {kind}")
        for label, n in sorted(self.mapped_out.items()):
            lines.append(f"dropped {n} spans labelled {label!r}: the label mapping maps it to nothing")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} items:")
            lines.extend(f"  {message}" for message in self.skipped)
        return "\n".join(lines)


class SpanChecker:
    """Validates spans for one read.

    ``labels`` is the set of labels the schema allows (``None`` accepts any);
    ``label_map`` renames raw labels first (a value of ``None`` deliberately
    drops that label, and is reported; the key ``"*"`` stands for every label
    the mapping does not name). ``strict`` raises on the first problem.
    """

    def __init__(self, labels=None, label_map: dict[str, str | None] | None = None, *, strict: bool = True,
                 report: ReadReport | None = None):
        self.labels = set(labels) if labels is not None else None
        self.label_map = dict(label_map or {})
        self.strict = strict
        self.report = report if report is not None else ReadReport()

    def fail(self, error: AnnotationError) -> None:
        """Raise in strict mode; otherwise record the error as a skipped item."""
        if self.strict:
            raise error
        self.report.skipped.append(str(error))

    def map_label(self, raw: str, *, where: str) -> str | None:
        if raw in self.label_map or "*" in self.label_map:
            # "*" maps every label not named in the mapping (e.g. collapse all PTC techniques).
            mapped = self.label_map[raw] if raw in self.label_map else self.label_map["*"]
            if mapped is None:
                self.report.mapped_out[raw] += 1
                return None
        else:
            mapped = raw
        if self.labels is not None and mapped not in self.labels:
            hint = f" (mapped from {raw!r})" if mapped != raw else ""
            self.fail(UnknownLabelError(
                f"unknown label {mapped!r}{hint}; the schema has {sorted(self.labels)}; "
                "pass a label mapping to rename or drop it", where=where))
            return None
        return mapped

    def check(self, text: str, start, end, label: str, *, where: str, expected_text: str | None = None,
              annotator: str = "") -> Span | None:
        """Return a valid :class:`Span`, or ``None`` when the item was skipped or mapped out."""
        if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool) or isinstance(end, bool):
            self.fail(OffsetError(f"offsets must be integers, got start={shown(start)} end={shown(end)}", where=where))
            return None
        if not isinstance(label, str) or not label:
            self.fail(AnnotationError(f"a label must be a non-empty string, got {shown(label)}", where=where))
            return None
        if expected_text is not None and not isinstance(expected_text, str):
            self.fail(AnnotationError(f"a span's text must be a string, got {shown(expected_text)}", where=where))
            return None
        if start > end:
            self.fail(OffsetError(f"reversed offsets: start {start} > end {end}", where=where))
            return None
        if start == end:
            self.fail(OffsetError(f"empty span at offset {start}", where=where))
            return None
        if start < 0 or (end > len(text) and expected_text is None):
            self.fail(OffsetError(f"offsets [{start}, {end}) out of range for a text of {len(text)} characters",
                                  where=where))
            return None
        if expected_text is not None and (end > len(text) or not _same_text(text[start:end], expected_text)):
            # An end past the text may still be a UTF-16 count: try the repairs before failing.
            repaired = self._repair(text, start, end, expected_text)
            if repaired is None:
                found = text[start:end] if end <= len(text) else "(beyond the end of the text)"
                self.fail(OffsetError(
                    f"span text does not match the document: the export says {_clip(expected_text)!r} "
                    f"but [{start}, {end}) holds {_clip(found)!r}", where=where))
                return None
            start, end, kind = repaired
            self.report.repaired[kind] += 1
        mapped = self.map_label(label, where=where)
        if mapped is None:
            return None
        return Span(start, end, mapped, annotator)

    def keep(self, document: AnnotatedDocument) -> bool:
        """Whether a document a reader made can be kept, counting it (and its spans) when it can.

        Its id, text, labels and annotator names must be valid Unicode: a JSON escape such as
        ``"\\ud800"`` gives an unpaired surrogate, which no tokenizer or dataset writer takes.
        """
        strings = [("document id", document.doc_id), ("text", document.text),
                   *(("annotator", name) for name in document.annotators),
                   *(("label", span.label) for span in document.spans),
                   *(("annotator", span.annotator) for span in document.spans)]
        for what, value in strings:
            problem = unicode_problem(value)
            if problem:
                self.fail(AnnotationError(f"the {what} {shown(value)} is {problem}" if what != "text"
                                          else f"the text is {problem}", where=document.origin or None))
                return False
        self.report.documents += 1
        self.report.spans += len(document.spans)
        return True

    @staticmethod
    def _repair(text: str, start: int, end: int, expected: str):
        s16, e16 = utf16_to_codepoint(text, start), utf16_to_codepoint(text, end)
        if s16 is not None and e16 is not None and text[s16:e16] == expected:
            return s16, e16, "offsets counted in UTF-16 code units, converted to characters"
        if "\r\n" in text:
            s_lf, e_lf = lf_to_crlf_offset(text, start), lf_to_crlf_offset(text, end)
            if _same_text(text[s_lf:e_lf], expected):
                return s_lf, e_lf, "offsets counted on LF text of a CRLF document, converted"
        return None


def utf16_to_codepoint(text: str, offset16: int) -> int | None:
    """The code-point index of a UTF-16 code-unit offset, or None if it falls inside a surrogate pair."""
    units = 0
    for index, char in enumerate(text):
        if units == offset16:
            return index
        if units > offset16:
            return None
        units += 2 if ord(char) > 0xFFFF else 1
    return len(text) if units == offset16 else None


def lf_to_crlf_offset(text: str, offset_lf: int) -> int:
    """Map an offset into ``text.replace('\\r\\n', '\\n')`` back to an offset into ``text``."""
    seen = 0
    index = 0
    while index < len(text) and seen < offset_lf:
        if text.startswith("\r\n", index):
            index += 2
        else:
            index += 1
        seen += 1
    return index


def _same_text(found: str, expected: str) -> bool:
    """Equal, allowing an export that wrote the span text with LF where the document has CRLF."""
    return found == expected or found.replace("\r\n", "\n") == expected.replace("\r\n", "\n")


def _clip(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def input_files(path: Path, checker: SpanChecker, *, pattern: str, accepts, empty_folder: str, wrong_file: str
                ) -> list[Path]:
    """The files one reader input names: a folder's files matching ``pattern``, or the input itself when
    ``accepts(path)``; an empty folder or a file of another kind is reported through ``checker``."""
    if path.is_dir():
        files = sorted(path.glob(pattern))
        if not files:
            checker.fail(AnnotationError(empty_folder, where=str(path)))
        return files
    if accepts(path):
        return [path]
    checker.fail(AnnotationError(wrong_file, where=str(path)))
    return []
