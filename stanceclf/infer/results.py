"""What prediction returns, and the one row specification every output uses.

:class:`Prediction` is one classified unit. :class:`RowSpec` names the columns (and their
Arrow types) of a sentence row or a per-document row for a given label list; ``to_records``,
``stanceclf score`` (JSONL, CSV and Parquet alike) and ``stanceclf classify --json`` all build
their rows through it, so the shapes cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class Prediction:
    """One classified unit (a sentence, or a whole input with ``split_sentences=False``)."""

    text: str
    start: int
    end: int
    labels: list[str]
    scores: dict[str, float]
    truncated: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# (name, arrow type name) of the fixed columns; label columns follow.
_SENTENCE_COLUMNS = (("doc_id", "string"), ("sentence_index", "int64"), ("start", "int64"), ("end", "int64"),
                     ("text", "string"), ("labels", "list<string>"))
_DOCUMENT_COLUMNS = (("doc_id", "string"), ("sentences", "int64"))


@dataclass(frozen=True)
class RowSpec:
    """The columns of one output table: sentence rows, or per-document rows (``per_document``)."""

    labels: tuple[str, ...]
    per_document: bool = False

    @property
    def typed_columns(self) -> list[tuple[str, str]]:
        if self.per_document:
            return [*_DOCUMENT_COLUMNS, *[(f"n_{label}", "int64") for label in self.labels],
                    *[(f"share_{label}", "float64") for label in self.labels]]
        return [*_SENTENCE_COLUMNS, *[(f"score_{label}", "float64") for label in self.labels]]

    @property
    def columns(self) -> list[str]:
        return [name for name, _ in self.typed_columns]

    def arrow_schema(self) -> pa.Schema:
        """One fixed schema for every Parquet part: a chunk with no labels must not type ``labels`` as list<null>."""
        import pyarrow as pa

        types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
                 "list<string>": pa.list_(pa.string())}
        return pa.schema([(name, types[kind]) for name, kind in self.typed_columns])

    def sentence_row(self, doc_id, index: int, prediction: Prediction) -> dict:
        row = {"doc_id": doc_id, "sentence_index": index, "start": prediction.start, "end": prediction.end,
               "text": prediction.text, "labels": list(prediction.labels)}
        row.update({f"score_{label}": prediction.scores[label] for label in self.labels})
        return row

    def document_row(self, doc_id, predictions: list[Prediction]) -> dict:
        hits = np.array([[label in p.labels for label in self.labels] for p in predictions],
                        dtype=bool).reshape(len(predictions), len(self.labels))
        row = {"doc_id": doc_id, "sentences": len(predictions)}
        row.update({f"n_{label}": int(hits[:, j].sum()) for j, label in enumerate(self.labels)})
        row.update({f"share_{label}": round(float(hits[:, j].mean()), 6) if len(predictions) else 0.0
                    for j, label in enumerate(self.labels)})
        return row

    def rows(self, doc_id, predictions: list[Prediction]) -> list[dict]:
        """The rows of one document's predictions."""
        if self.per_document:
            return [self.document_row(doc_id, predictions)]
        return [self.sentence_row(doc_id, index, p) for index, p in enumerate(predictions)]
