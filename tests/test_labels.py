"""The project's own annotations read back whole: every stand-off file in labels/ names texts that exist and
have not changed (checksums), with labels of the schema, and the pool batches' records of who picked, read
and adjudicated what agree with the annotations. Skips without ../shared, whose texts the annotations name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stanceclf.data.readers import read_annotations
from stanceclf.data.schema import load_schema

LABELS = Path(__file__).resolve().parents[1] / "labels" / "claim-types"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/corpus is absent: the annotations "
                                  "name texts there (stand-off) and cannot be read without them")


@needs_shared
@pytest.mark.parametrize("name", ["batch3.jsonl", "double-annotation/batch3-first-pass.jsonl",
                                  "double-annotation/batch3-second-pass.jsonl",
                                  "double-annotation/batch3-rest-first-pass.jsonl",
                                  "double-annotation/batch3-rest-second-pass.jsonl", "batch4.jsonl",
                                  "double-annotation/batch4-first-pass.jsonl",
                                  "double-annotation/batch4-second-pass.jsonl", "batch5.jsonl",
                                  "double-annotation/batch5-first-pass.jsonl",
                                  "double-annotation/batch5-second-pass.jsonl"])
def test_labels_pool_batches_read_back_from_the_pool_by_reference(name):
    documents = read_annotations("native", LABELS / name, labels=load_schema("claim-types").label_names)
    records = [json.loads(line) for line in (LABELS / name).read_text(encoding="utf-8").splitlines()]
    assert len(documents) == len(records) and all("text" not in r and "record" in r for r in records)
    assert all(span.annotator for document in documents for span in document.spans)


#: Each batch from the pool: its second-pass files (one per round of double annotation).
SECOND_PASSES = {"batch3": ("batch3-second-pass.jsonl", "batch3-rest-second-pass.jsonl"),
                 "batch4": ("batch4-second-pass.jsonl",), "batch5": ("batch5-second-pass.jsonl",)}


@pytest.mark.parametrize("batch", sorted(SECOND_PASSES))
def test_labels_pool_batch_picks_record_every_annotated_article(batch):
    picks = [json.loads(line) for line in (LABELS / f"{batch}-picks.jsonl").read_text(encoding="utf-8").splitlines()]
    annotated = [json.loads(line)["doc_id"] for line in (LABELS / f"{batch}.jsonl").read_text().splitlines()]
    assert sorted(p["doc_id"] for p in picks) == sorted(annotated) and len(set(annotated)) == len(annotated)
    assert {p["strategy"] for p in picks} == {"uncertainty", "flagged", "random"}
    second = {record["doc_id"]: record["annotators"] for name in SECOND_PASSES[batch]
              for record in map(json.loads, (LABELS / "double-annotation" / name).read_text().splitlines())}
    assert set(second) == {p["doc_id"] for p in picks if p["double_annotated"]} == set(annotated)
    assert all(second[p["doc_id"]] == [p["second_annotator"]] for p in picks)
    gold = {record["doc_id"]: record["annotators"]
            for record in map(json.loads, (LABELS / f"{batch}.jsonl").read_text().splitlines())}
    assert all(gold[p["doc_id"]] == sorted({p["first_annotator"], p["second_annotator"]} | {p["adjudicator"]} - {None})
               for p in picks)
    war = sum("ukraine-war-news" in p["corpus"] for p in picks)
    assert war * 3 >= 2 * len(picks)  # at least two thirds from the war-news file


def test_labels_pool_batches_hold_distinct_articles():
    ids = [json.loads(line)["doc_id"] for name in ("annotations", *SECOND_PASSES)
           for line in (LABELS / f"{name}.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids))


@needs_shared
@pytest.mark.parametrize("batch, passes", [
    ("batch3", ("batch3-first-pass.jsonl", "batch3-second-pass.jsonl")),
    ("batch3", ("batch3-rest-first-pass.jsonl", "batch3-rest-second-pass.jsonl")),
    ("batch4", ("batch4-first-pass.jsonl", "batch4-second-pass.jsonl")),
    ("batch5", ("batch5-first-pass.jsonl", "batch5-second-pass.jsonl"))])
def test_labels_pool_batch_is_the_adjudication_of_its_two_passes(batch, passes):
    """Where the two blind passes agree, the batch has their labels; where they differ, an adjudicator
    (named in the picks) decided, and its decision is on every span of that sentence."""
    from stanceclf.data.adjudication import disagreements
    from stanceclf.data.dataset import BuildConfig, sentence_examples

    schema = load_schema("claim-types")
    first, second = (read_annotations("native", LABELS / "double-annotation" / name, labels=schema.label_names)
                     for name in passes)
    gold = {d.doc_id: d for d in read_annotations("native", LABELS / f"{batch}.jsonl", labels=schema.label_names)}
    picks = {p["doc_id"]: p for p in map(json.loads, (LABELS / f"{batch}-picks.jsonl").read_text().splitlines())}
    disputed = {(d.doc_id, d.sentence_index) for d in disagreements(first, second, schema)}
    config = BuildConfig()
    for doc in first:
        adjudicated, passed = (sentence_examples(d, schema, config) for d in (gold[doc.doc_id], doc))
        assert len(adjudicated) == len(passed)
        for index, (a, g) in enumerate(zip(passed, adjudicated)):
            if (doc.doc_id, index) in disputed:
                whose = {s.annotator for s in gold[doc.doc_id].spans if s.start < g["end"] and s.end > g["start"]}
                assert whose <= {picks[doc.doc_id]["adjudicator"]}, (doc.doc_id, index)
            else:
                assert a["labels"] == g["labels"], (doc.doc_id, index)
    assert {d.doc_id for d in first if picks[d.doc_id]["adjudicator"]} == {doc_id for doc_id, _ in disputed}
