"""Sentence splitting with exact character offsets into the original text.

News text mixes headlines, bylines and captions (lines without final
punctuation) with running prose, so each line is split on its own: a newline
always ends a sentence. Within a line a maintained library finds the
boundaries (``syntok`` by default; ``pysbd`` and ``blingfire`` are selectable).
See ``benchmarks/sentence_splitters.py`` for the comparison behind the default.

Every :class:`SentenceSpan` satisfies ``text[span.start:span.end] == span.text``,
with surrounding whitespace excluded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["syntok", "pysbd", "blingfire"]

_LINE = re.compile(r"[^\n]+")
_HAS_WORD = re.compile(r"\w")
_LIST_MARKER = re.compile(r"^(?:\(?\d{1,3}[.)]|\(?[a-zA-Z][.)]|[-*•–])$")


@dataclass(frozen=True)
class SentenceSpan:
    start: int
    end: int
    text: str


class SentenceSplitter(BaseModel):
    """Splits documents into sentences; its settings are stored in every model's manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = "syntok"
    #: A longer run of text without a boundary is cut at whitespace, so that no
    #: unit sent to the model is unboundedly long (a 5 MB document on one line).
    max_sentence_chars: int = Field(default=3000, ge=50)

    def split(self, text: str) -> list[SentenceSpan]:
        sentences: list[SentenceSpan] = []
        for line in _LINE.finditer(text):
            line_start = line.start()
            for start, end in self._split_line(line.group()):
                for piece_start, piece_end in _cap_length(text, line_start + start, line_start + end,
                                                          self.max_sentence_chars):
                    sentences.append(SentenceSpan(piece_start, piece_end, text[piece_start:piece_end]))
        return sentences

    def _split_line(self, line: str) -> list[tuple[int, int]]:
        if not line.strip():
            return []
        starts = sorted(set(self._backend_starts(line)) | {_first_non_space(line)})
        # A sentence runs from its start to the next one's: no character is lost
        # whatever the backend skips or normalises.
        bounds = []
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(line)
            start, end = _strip(line, start, end)
            if end > start:
                bounds.append((start, end))
        return _merge_fragments(line, bounds)

    def _backend_starts(self, line: str) -> list[int]:
        if self.backend == "syntok":
            return [_syntok_start(sentence) for paragraph in self._syntok.analyze(line) for sentence in paragraph]
        if self.backend == "pysbd":
            # A pysbd Segmenter keeps the text it is working on: one per call keeps threads apart.
            return [span.start for span in self._pysbd.Segmenter(language="en", clean=False, char_span=True)
                    .segment(line)]
        _, offsets = self._blingfire.text_to_sentences_and_offsets(line)
        return [start for start, _ in offsets]

    @cached_property
    def _syntok(self):
        import syntok.segmenter

        return syntok.segmenter

    @cached_property
    def _pysbd(self):
        import pysbd

        return pysbd

    @cached_property
    def _blingfire(self):
        import blingfire

        return blingfire


def split_sentences(text: str, splitter: SentenceSplitter | None = None) -> list[SentenceSpan]:
    """Split ``text`` with the default splitter (or the one given)."""
    return (splitter or SentenceSplitter()).split(text)


def _syntok_start(sentence) -> int:
    return sentence[0].offset


def _first_non_space(line: str) -> int:
    return len(line) - len(line.lstrip())


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _merge_fragments(line: str, bounds: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join pieces that are not sentences: punctuation-only bits to the previous
    sentence, list markers ("1.", "a)") to the next one."""
    merged: list[tuple[int, int]] = []
    carry_start: int | None = None
    for start, end in bounds:
        piece = line[start:end]
        if carry_start is not None:
            start, carry_start = carry_start, None
            piece = line[start:end]
        if _LIST_MARKER.match(piece):
            carry_start = start
            continue
        if not _HAS_WORD.search(piece) and merged:
            merged[-1] = (merged[-1][0], end)
            continue
        merged.append((start, end))
    if carry_start is not None:
        merged.append((carry_start, bounds[-1][1]) if not merged else (merged.pop()[0], bounds[-1][1]))
    return merged


def _cap_length(text: str, start: int, end: int, limit: int):
    """Cut ``[start, end)`` into pieces of at most ``limit`` characters at whitespace."""
    while end - start > limit:
        # The last whitespace of any kind (no-break and other Unicode spaces too) in the second half.
        cut = next((i for i in range(start + limit - 1, start + limit // 2 - 1, -1) if text[i].isspace()),
                   start + limit)
        piece_start, piece_end = _strip(text, start, cut)
        if piece_end > piece_start:
            yield piece_start, piece_end
        start, _ = _strip(text, cut, end)
    if end > start:
        yield start, end
