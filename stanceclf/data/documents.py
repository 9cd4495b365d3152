"""The in-memory annotation model every reader produces.

A :class:`Document` is an id, its text and the checksum of that text; an
:class:`AnnotatedDocument` adds character spans with labels and the annotator
who decided each. Offsets are Python string indices (Unicode code points),
end exclusive, into the text exactly as read (no newline conversion).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from stanceclf.errors import InputFileError

_BOM = "\ufeff"


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (an unpaired surrogate, e.g. from a JSON
    escape or undecodable bytes), or None. Tokenizers and writers fail on such text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: an unpaired surrogate at character {exc.start}"
    return None


def printable(text: str) -> str:
    """``text`` with unpaired surrogates written as backslash escapes, so that it can be printed, logged and
    written to any output (the escapes name what was there)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_JSON_KINDS = {bool: "a boolean", float: "a number with a fraction", list: "a list", dict: "an object",
               type(None): "null"}


def document_id(value) -> str:
    """The one rule for a document id read from a typed record (a JSON line, a Label Studio task, a Parquet row).

    An id is a non-empty string, kept as it is, or an integer, written as its decimal string: ``7`` and
    ``"7"`` are the same id, so that two records carrying them meet the duplicate-id check instead of
    passing as two documents. Anything else (``true``, ``1.5``, a list, an object, ``""``) raises
    ``ValueError`` saying what it got; the caller names the record. Unicode is checked where the
    document is kept (an id with an unpaired surrogate cannot be written out).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # more digits than Python converts
            raise ValueError("a document id must be a string or an integer of at most 4,300 digits") from None
    if isinstance(value, str):
        if not value:
            raise ValueError("a document id must not be empty")
        return value
    kind = _JSON_KINDS.get(type(value), type(value).__name__)
    raise ValueError(f"a document id must be a string or an integer, not {kind}")


def decode_document_text(raw: bytes, where: str) -> tuple[str, int]:
    """A document's text from its bytes, and how many characters were removed from its start.

    The one rule for every path that reads a document (``classify``, ``score``, every
    annotation reader, sheets): UTF-8, newlines untouched (CRLF stays CRLF), and a leading
    byte-order mark is not part of the text (removed; the second value is then 1, so that a
    format whose offsets count the mark can shift them).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"not valid UTF-8: {exc.reason} at byte {exc.start}", where=where) from None
    return (text[1:], 1) if text.startswith(_BOM) else (text, 0)


def read_document_bytes(path: str | Path) -> bytes:
    """A document file's bytes, or an :class:`InputFileError` naming the file."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputFileError("file not found", where=str(path)) from None
    except IsADirectoryError:
        raise InputFileError("is a folder; give the files in it", where=str(path)) from None
    except OSError as exc:
        raise InputFileError(exc.strerror or str(exc), where=str(path)) from None
    except ValueError:  # a NUL byte or an unpaired surrogate in the name: no file can have it
        raise InputFileError("not a usable file name", where=printable(str(path))) from None


def read_document_text(path: str | Path) -> str:
    """A document's text exactly as every stage sees it (see :func:`decode_document_text`)."""
    return decode_document_text(read_document_bytes(path), str(path))[0]


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
    #: Where a reader found the document (file, and line or record), for messages about it; not part of its value.
    origin: str = field(default="", compare=False, repr=False)

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
