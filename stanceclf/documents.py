"""The in-memory annotation model every reader produces.

A :class:`Document` is an id, its text and the checksum of that text; an
:class:`AnnotatedDocument` adds character spans with labels and the annotator
who decided each. Offsets are Python string indices (Unicode code points),
end exclusive, into the text exactly as read (no newline conversion).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (an unpaired surrogate, e.g. from a JSON
    escape or undecodable bytes), or None. Tokenizers and writers fail on such text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: an unpaired surrogate at character {exc.start}"
    return None


def text_checksum(text: str) -> str:
    """The checksum stored with stand-off annotations: sha256 of the UTF-8 text."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int
    label: str
    annotator: str = ""

    def overlap(self, start: int, end: int) -> int:
        """Number of characters this span shares with ``[start, end)``."""
        return max(0, min(self.end, end) - max(self.start, start))


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str

    @property
    def checksum(self) -> str:
        return text_checksum(self.text)


@dataclass
class AnnotatedDocument:
    """A completely annotated document: a sentence without a span is a negative."""

    doc_id: str
    text: str
    spans: list[Span] = field(default_factory=list)
    annotators: tuple[str, ...] = ()
    source: str = ""

    @property
    def checksum(self) -> str:
        return text_checksum(self.text)

    @property
    def document(self) -> Document:
        return Document(self.doc_id, self.text)

    def labels(self) -> set[str]:
        return {span.label for span in self.spans}

    def with_spans(self, spans: list[Span]) -> "AnnotatedDocument":
        return replace(self, spans=sorted(spans))
