"""Sentence-level agreement between two annotations of the same documents."""

from __future__ import annotations

import pytest

from stanceclf.data.agreement import format_agreement, sentence_agreement
from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.errors import AnnotationError
from stanceclf.data.schema import load_schema

TEXT = "One will fall. Two will rise. Three is here. Four is there."
CLAIMS = load_schema("claim-types")


def span(phrase: str, label: str = "prediction", who: str = "a") -> Span:
    start = TEXT.index(phrase)
    return Span(start, start + len(phrase), label, who)


def test_agreement_f1_and_kappa_per_label_by_hand():
    first = [AnnotatedDocument("d1", TEXT, [span("One will fall."), span("Two will rise.")])]
    second = [AnnotatedDocument("d1", TEXT, [span("One will fall.", who="b"), span("Three is here.", who="b")])]
    result = sentence_agreement(first, second, CLAIMS)
    row = result["labels"]["prediction"]
    # first 1 1 0 0, second 1 0 1 0: one shared positive of two each -> F1 0.5; observed 0.5 = chance 0.5 -> kappa 0
    assert (row["positives_first"], row["positives_second"]) == (2, 2)
    assert row["f1"] == pytest.approx(0.5) and row["kappa"] == pytest.approx(0.0)
    assert result["sentences"] == 4 and result["exact_match"] == pytest.approx(0.5)


def test_agreement_names_documents_only_one_side_annotated():
    first = [AnnotatedDocument("d1", TEXT, []), AnnotatedDocument("only-a", "Text.", [])]
    second = [AnnotatedDocument("d1", TEXT, [])]
    result = sentence_agreement(first, second, CLAIMS)
    assert result["documents"] == 1 and result["only_in_first"] == ["only-a"] and result["only_in_second"] == []
    assert "annotated only in the first file: 1 document(s) (only-a)" in format_agreement(result)


def test_agreement_different_texts_rejected():
    with pytest.raises(AnnotationError, match="different texts"):
        sentence_agreement([AnnotatedDocument("d1", TEXT, [])], [AnnotatedDocument("d1", TEXT + " More.", [])],
                           CLAIMS)
