"""Adjudication: a third reader decides the sentences on which two annotations of the same documents differ.

After a double annotation (:mod:`stanceclf.data.agreement` measures it), :func:`export_adjudication_sheets`
writes, per document with a disagreement, a sheet of the whole article in which each disputed sentence is
marked and followed by the two label sets as ``X`` and ``Y``, in an order drawn per sentence, so that the
adjudicator cannot tell whose set is whose (a key file outside the sheets' folder records it). The adjudicator writes ``<doc_id>.tsv`` with one line per disputed sentence::

    <index><TAB><labels><TAB><reason>

with the labels as on an annotation sheet (``-``, or codes or names joined by commas); the decision may be
``X``'s set, ``Y``'s, or another. :func:`merge_adjudicated` then makes the adjudicated annotation: each
sentence both annotations agree on keeps the first annotation's labels, with the annotator of the span
that gave each; each disputed sentence takes the adjudicator's decision, with the adjudicator as its
annotator; the reasons are returned beside it. Labels are sentence decisions, by the dataset builder's
rule (:func:`sentence_examples`), so the result holds one span per labelled sentence and label, covering
the whole sentence (a first annotation's shorter spans are widened to their sentence).

Both annotations must cover the same documents: a document only one of them annotated has nothing to
adjudicate against and is an error, not left out.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from stanceclf.data.agreement import paired_documents
from stanceclf.data.dataset import BuildConfig, sentence_examples
from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.data.schema import LabelSchema
from stanceclf.data.sheets import decision_lines, label_codes, read_sheet_offsets, write_sheet
from stanceclf.errors import AnnotationError
from stanceclf.files import replaced_atomically


@dataclass(frozen=True)
class Disagreement:
    """One sentence whose label sets differ between the two annotations."""

    doc_id: str
    sentence_index: int
    first: tuple[str, ...]
    second: tuple[str, ...]


def _pairs(first: list[AnnotatedDocument], second: list[AnnotatedDocument], names: tuple[str, str]
           ) -> list[tuple[AnnotatedDocument, AnnotatedDocument]]:
    pairs = paired_documents(first, second, names)
    for mine, theirs, name in ((first, second, names[0]), (second, first, names[1])):
        other_ids = {doc.doc_id for doc in theirs}
        alone = [doc.doc_id for doc in mine if doc.doc_id not in other_ids]
        if alone:
            raise AnnotationError(f"{len(alone)} document(s) annotated only here, with nothing to adjudicate "
                                  f"against: {', '.join(alone[:5])}{', ...' if len(alone) > 5 else ''}", where=name)
    return pairs


def _label_sets(document: AnnotatedDocument, schema: LabelSchema, config: BuildConfig) -> list[tuple[str, ...]]:
    names = schema.label_names
    return [tuple(name for name, hot in zip(names, example["labels"]) if hot)
            for example in sentence_examples(document, schema, config)]


def disagreements(first: list[AnnotatedDocument], second: list[AnnotatedDocument], schema: LabelSchema,
                  config: BuildConfig | None = None, *, names: tuple[str, str] = ("the first annotation",
                                                                               "the second annotation")
                  ) -> list[Disagreement]:
    """Every sentence whose label sets differ between two annotations of the same documents, in document
    order (``names`` name the two in errors)."""
    config = config or BuildConfig()
    found = []
    for doc, other in _pairs(first, second, names):
        for index, (a, b) in enumerate(zip(_label_sets(doc, schema, config), _label_sets(other, schema, config))):
            if a != b:
                found.append(Disagreement(doc.doc_id, index, a, b))
    return found


def _shown(labels: tuple[str, ...], codes: dict[str, str]) -> str:
    code_of = {name: code for code, name in codes.items()}
    return ",".join(code_of[name] for name in labels) or "-"


def export_adjudication_sheets(first: list[AnnotatedDocument], second: list[AnnotatedDocument], schema: LabelSchema,
                               out_dir: str | Path, key_file: str | Path, *, seed: int = 0,
                               config: BuildConfig | None = None,
                               names: tuple[str, str] = ("the first annotation", "the second annotation")
                               ) -> list[Disagreement]:
    """Write an adjudication sheet and an offsets file (as :func:`~stanceclf.data.sheets.write_sheet` writes
    them) per document with a disagreement, and ``key_file`` (JSONL: which annotation each disputed
    sentence's X is), which must lie outside ``out_dir``, the folder the adjudicator gets; returns the
    disagreements. Which set is shown as X is drawn from ``seed``, the document and the sentence, so a
    rerun writes the same."""
    config = config or BuildConfig()
    out_dir, key_file = Path(out_dir), Path(key_file)
    if key_file.resolve().is_relative_to(out_dir.resolve()):
        raise AnnotationError("the key says whose labels X and Y are: keep it outside the folder of sheets that "
                              "the adjudicator reads", where=str(key_file))
    found = disagreements(first, second, schema, config, names=names)
    by_doc: dict[str, dict[int, Disagreement]] = {}
    for item in found:
        by_doc.setdefault(item.doc_id, {})[item.sentence_index] = item
    codes = label_codes(schema)
    legend = ", ".join(f"{code}={name}" for code, name in codes.items())
    out_dir.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)  # a key is only ever beside the sheets it was written with
    key = []
    for doc, _ in paired_documents(first, second, names):
        disputed = by_doc.get(doc.doc_id)
        if not disputed:
            continue
        sentences = config.splitter.split(doc.text)
        lines = [f"# adjudication of document {doc.doc_id}: {len(disputed)} of its {len(sentences)} sentences "
                 "(marked >>) got different labels from two annotators, shown as X and Y in no fixed order.",
                 "# Read the whole article; decide each marked sentence against the guide (X's set, Y's or another).",
                 f"# Write {doc.doc_id}.tsv: one line per marked sentence, <index><TAB><labels><TAB><reason>.",
                 f"# codes: {legend}; '-' for none"]
        for index, sentence in enumerate(sentences):
            item = disputed.get(index)
            if item is None:
                lines.append(f"[{index}] {sentence.text}")
                continue
            first_is_x = random.Random(f"{seed}:{doc.doc_id}:{index}").random() < 0.5
            x, y = (item.first, item.second) if first_is_x else (item.second, item.first)
            lines += [f">> [{index}] {sentence.text}", f"     X: {_shown(x, codes)}", f"     Y: {_shown(y, codes)}"]
            key.append({"doc_id": doc.doc_id, "sentence_index": index, "X": "first" if first_is_x else "second"})
        write_sheet(out_dir, doc.doc_id, doc.text, sentences, lines)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(key_file) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in key), encoding="utf-8")
    return found


def read_adjudication(path: str | Path, disputed: set[int], schema: LabelSchema
                      ) -> tuple[dict[int, tuple[str, ...]], dict[int, str]]:
    """One document's adjudication file: ``({sentence index: labels}, {sentence index: reason})``. Every
    disputed sentence needs exactly one decision, and no other sentence may have one."""
    decided: dict[int, tuple[str, ...]] = {}
    reasons: dict[int, str] = {}
    for where, index, labels, reason in decision_lines(Path(path), schema):
        if index not in disputed:
            raise AnnotationError(f"sentence {index} is not in dispute: decide only the sentences marked >>",
                                  where=where)
        if index in decided:
            raise AnnotationError(f"sentence {index} is decided twice", where=where)
        decided[index] = tuple(name for name in schema.label_names if name in labels)
        if reason:
            reasons[index] = reason
    missing = sorted(disputed - set(decided))
    if missing:
        raise AnnotationError(f"no decision for the disputed sentences {missing}", where=str(path))
    return decided, reasons


def merge_adjudicated(first: list[AnnotatedDocument], second: list[AnnotatedDocument], decisions: str | Path,
                      sheets: str | Path, schema: LabelSchema, adjudicator: str, *, config: BuildConfig | None = None,
                      names: tuple[str, str] = ("the first annotation", "the second annotation")
                      ) -> tuple[list[AnnotatedDocument], list[dict]]:
    """The adjudicated annotation of the documents (see the module's docstring), from the adjudicator's
    ``<doc_id>.tsv`` files in ``decisions``; ``sheets`` holds the adjudication sheets' offsets files, which
    must be of the same texts and sentences. Returns the documents and the decisions with their reasons
    (``doc_id``, ``sentence_index``, ``labels``, ``reason``, ``adjudicator``). A document in dispute without
    its decision file, or a decision file of a document not in dispute, is an error naming it; so is an
    adjudicator who is one of the two annotators."""
    config = config or BuildConfig()
    decisions, sheets = Path(decisions), Path(sheets)
    pairs = _pairs(first, second, names)
    annotators = {name for doc, other in pairs for name in (*doc.annotators, *other.annotators)}
    annotators |= {span.annotator for doc, other in pairs for span in (*doc.spans, *other.spans)}
    if adjudicator in annotators or not adjudicator:
        raise AnnotationError(f"the adjudicator must be a third reader, named apart from the annotators "
                              f"({', '.join(sorted(a for a in annotators if a))})", where=str(decisions))
    disputed: dict[str, set[int]] = {}
    for item in disagreements(first, second, schema, config, names=names):
        disputed.setdefault(item.doc_id, set()).add(item.sentence_index)
    files = {file.stem: file for file in sorted(decisions.glob("*.tsv"))} if decisions.is_dir() else {}
    stray = sorted(set(files) - set(disputed))
    if stray:
        raise AnnotationError(f"decision files of documents not in dispute: {', '.join(stray[:5])}"
                              f"{', ...' if len(stray) > 5 else ''}", where=str(decisions))
    undecided = sorted(set(disputed) - set(files))
    if undecided:
        raise AnnotationError(f"{len(undecided)} document(s) in dispute have no decision file: "
                              f"{', '.join(undecided[:5])}{', ...' if len(undecided) > 5 else ''}",
                              where=str(decisions))
    merged, reasons = [], []
    for doc, other in pairs:
        sentences = config.splitter.split(doc.text)
        decided: dict[int, tuple[str, ...]] = {}
        if doc.doc_id in disputed:
            offsets_file = sheets / f"{doc.doc_id}.offsets.json"
            if read_sheet_offsets(offsets_file, doc.text)["sentences"] != [[s.start, s.end] for s in sentences]:
                raise AnnotationError("the sheet's sentences are not the splitter's now: export the sheets again",
                                      where=str(offsets_file))
            decided, why = read_adjudication(files[doc.doc_id], disputed[doc.doc_id], schema)
            reasons += [{"doc_id": doc.doc_id, "sentence_index": index, "labels": list(decided[index]),
                         "reason": why.get(index, ""), "adjudicator": adjudicator} for index in sorted(decided)]
        agreed = _label_sets(doc, schema, config)
        spans = []
        for index, sentence in enumerate(sentences):
            if index in decided:
                spans += [Span(sentence.start, sentence.end, label, adjudicator) for label in decided[index]]
                continue
            for label in agreed[index]:  # the annotator whose span gave the label, by the builder's rule
                source = next(span for span in doc.spans
                              if span.label == label and config.marks(span, sentence.start, sentence.end))
                spans.append(Span(sentence.start, sentence.end, label, source.annotator))
        names_of_doc = set(doc.annotators) | set(other.annotators) | ({adjudicator} if decided else set())
        merged.append(AnnotatedDocument(doc.doc_id, doc.text, sorted(spans), tuple(sorted(names_of_doc)), doc.source))
    return merged, reasons
