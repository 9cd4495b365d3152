"""Inter-annotator agreement at the sentence level.

Two annotations of the same documents are turned into sentence labels with
the dataset builder's own rule, then compared per label: F1 of one annotator
against the other (symmetric) and Cohen's kappa.
"""

from __future__ import annotations

from stanceclf.data.dataset import BuildConfig, sentence_examples
from stanceclf.data.documents import AnnotatedDocument
from stanceclf.errors import AnnotationError
from stanceclf.data.schema import LabelSchema


def paired_documents(first: list[AnnotatedDocument], second: list[AnnotatedDocument],
                     names: tuple[str, str] = ("the first annotation", "the second annotation")
                     ) -> list[tuple[AnnotatedDocument, AnnotatedDocument]]:
    """``(first's, second's)`` annotation of each document both cover, in ``first``'s order; an error when
    they share none or annotated different texts under one id (``names`` name the two in it: their files)."""
    by_id = {doc.doc_id: doc for doc in second}
    pairs = [(doc, by_id[doc.doc_id]) for doc in first if doc.doc_id in by_id]
    if not pairs:
        raise AnnotationError(f"{names[0]} and {names[1]} share no document id")
    for doc, other in pairs:
        if other.checksum != doc.checksum:
            raise AnnotationError(f"{names[0]} and {names[1]} were made on different texts",
                                  where=f"document {doc.doc_id}")
    return pairs


def sentence_agreement(first: list[AnnotatedDocument], second: list[AnnotatedDocument], schema: LabelSchema,
                       config: BuildConfig | None = None, *,
                       names: tuple[str, str] = ("the first annotation", "the second annotation")) -> dict:
    """Per-label agreement over the documents both annotations cover (same text required)."""
    from sklearn.metrics import cohen_kappa_score, f1_score

    config = config or BuildConfig()
    pairs = paired_documents(first, second, names)
    rows_a, rows_b = [], []
    for doc, other in pairs:
        rows_a += [e["labels"] for e in sentence_examples(doc, schema, config)]
        rows_b += [e["labels"] for e in sentence_examples(other, schema, config)]
    first_ids, second_ids = {doc.doc_id for doc in first}, {doc.doc_id for doc in second}
    only_first, only_second = sorted(first_ids - second_ids), sorted(second_ids - first_ids)
    result = {"documents": len(pairs), "sentences": len(rows_a), "labels": {},
              "only_in_first": only_first, "only_in_second": only_second,
              "exact_match": sum(a == b for a, b in zip(rows_a, rows_b)) / len(rows_a)}
    for j, label in enumerate(schema.label_names):
        a = [row[j] for row in rows_a]
        b = [row[j] for row in rows_b]
        result["labels"][label] = {
            "positives_first": sum(a), "positives_second": sum(b),
            "f1": float(f1_score(a, b, zero_division=1.0)),
            "kappa": float(cohen_kappa_score(a, b)) if len(set(a) | set(b)) > 1 else 1.0,
        }
    return result


def format_agreement(result: dict) -> str:
    lines = [f"{result['documents']} documents, {result['sentences']} sentences; "
             f"identical label sets on {result['exact_match']:.1%} of sentences.", "",
             "| label | positives (first) | positives (second) | F1 | Cohen's kappa |", "|---|---:|---:|---:|---:|"]
    for side in ("first", "second"):
        missing = result.get(f"only_in_{side}", [])
        if missing:
            lines.insert(1, f"Left out, annotated only in the {side} file: {len(missing)} document(s) "
                            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}).")
    for label, row in result["labels"].items():
        lines.append(f"| {label} | {row['positives_first']} | {row['positives_second']} | {row['f1']:.3f} | "
                     f"{row['kappa']:.3f} |")
    return "\n".join(lines)
