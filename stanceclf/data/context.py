"""What a model reads beside each sentence: its neighbours and its document's title.

A human reader decides a sentence with the sentences around it and the article's headline in view. A
recipe's ``[data] context`` (:class:`ContextSettings`) gives the model the same: each sentence is read
with a context string, the second segment of the tokenizer's pair input (``[CLS] sentence [SEP] context
[SEP]``). :func:`sentence_contexts` is the one rule that makes that string, from a document's sentences
as the splitter gives them; the dataset builder calls it for training and the loaded model for
prediction, so both build the same input.

The context has fixed slots, in reading order, each slot there only when the settings ask for it::

    title | previous sentences | next sentences

- **title**: the document's first sentence, which is its headline in a news file (the splitter ends a
  sentence at every newline, so a headline line is a sentence of its own). Available for every document
  without an extra field. Left empty for the title itself and when the previous sentences already hold it.
- **previous** / **next**: up to that many neighbouring sentences, joined by a space; empty at the start
  or end of the document.

Slots are joined by :data:`SEPARATOR`: plain text, since the tokenizer's own separator is not known
here, and one that every tokenizer keeps as a token. An empty slot stays in place (two markers in a
row), so that a slot's position tells the model what it holds. The context is cut to what the model's
``max_length`` leaves after the sentence, from its end (the next sentences go first); the sentence
itself is cut only when it alone is too long.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from stanceclf.errors import EvaluationError

#: Between the slots of a context string.
SEPARATOR = " | "
#: The most neighbours on one side: each costs tokens of every forward pass.
MAX_NEIGHBOURS = 10


class ContextSettings(BaseModel):
    """Which context each sentence is read with; all off by default (the sentence alone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Sentences before the sentence.
    previous: int = Field(default=0, ge=0, le=MAX_NEIGHBOURS)
    #: Sentences after the sentence.
    next: int = Field(default=0, ge=0, le=MAX_NEIGHBOURS)
    #: The document's first sentence (its headline).
    title: bool = False

    @property
    def enabled(self) -> bool:
        """Whether any context is read: with none, a sentence is read alone, exactly as before contexts existed."""
        return bool(self.previous or self.next or self.title)


def sentence_contexts(sentences: Sequence[str], settings: ContextSettings) -> list[str | None]:
    """The context string of each sentence of one document (``sentences``: its sentence texts in order),
    or None for every sentence when ``settings`` read no context."""
    if not settings.enabled:
        return [None] * len(sentences)
    contexts = []
    for index in range(len(sentences)):
        first_previous = max(0, index - settings.previous)
        slots = []
        if settings.title:
            slots.append(sentences[0] if first_previous > 0 else "")
        if settings.previous:
            slots.append(" ".join(sentences[first_previous:index]))
        if settings.next:
            slots.append(" ".join(sentences[index + 1: index + 1 + settings.next]))
        contexts.append(SEPARATOR.join(slots))
    return contexts


def contexts_of_rows(doc_ids: Sequence[str], sentence_indices: Sequence[int], texts: Sequence[str],
                     settings: ContextSettings) -> list[str | None]:
    """:func:`sentence_contexts` for the rows of a built dataset (a document's rows in any order), rebuilt from
    each document's rows. Every sentence of a document must be there: a built split holds documents whole."""
    if not settings.enabled:
        return [None] * len(texts)
    documents: dict[str, dict[int, str]] = {}
    for doc_id, index, text in zip(doc_ids, sentence_indices, texts):
        documents.setdefault(doc_id, {})[index] = text
    contexts: dict[str, list[str | None]] = {}
    for doc_id, rows in documents.items():
        missing = sorted(set(range(len(rows))) - set(rows))
        if missing:
            raise EvaluationError(f"document {doc_id!r} lacks sentence(s) {missing[:5]}: a sentence's context is "
                                  "built from its whole document, so every sentence of it must be in the rows")
        contexts[doc_id] = sentence_contexts([rows[i] for i in range(len(rows))], settings)
    return [contexts[doc_id][index] for doc_id, index in zip(doc_ids, sentence_indices)]
