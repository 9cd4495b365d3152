"""The project's own annotations read back whole: every stand-off file in labels/ names texts that exist and
have not changed (checksums), with labels of the schema, and the batch-3 records of who picked what agree
with the annotations. Skips without ../shared, whose texts the annotations name."""

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
                                  "double-annotation/batch3-second-pass.jsonl"])
def test_labels_batch3_reads_back_from_the_pool_by_reference(name):
    documents = read_annotations("native", LABELS / name, labels=load_schema("claim-types").label_names)
    records = [json.loads(line) for line in (LABELS / name).read_text(encoding="utf-8").splitlines()]
    assert len(documents) == len(records) and all("text" not in r and "record" in r for r in records)
    assert all(span.annotator for document in documents for span in document.spans)


def test_labels_batch3_picks_record_every_annotated_article():
    picks = [json.loads(line) for line in (LABELS / "batch3-picks.jsonl").read_text(encoding="utf-8").splitlines()]
    annotated = [json.loads(line)["doc_id"] for line in (LABELS / "batch3.jsonl").read_text().splitlines()]
    assert sorted(p["doc_id"] for p in picks) == sorted(annotated) and len(set(annotated)) == len(annotated)
    assert {p["strategy"] for p in picks} == {"uncertainty", "flagged", "random"}
    double = {json.loads(line)["doc_id"]
              for line in (LABELS / "double-annotation" / "batch3-second-pass.jsonl").read_text().splitlines()}
    assert double == {p["doc_id"] for p in picks if p["double_annotated"]}
    war = sum("ukraine-war-news" in p["corpus"] for p in picks)
    assert war * 3 >= 2 * len(picks)  # at least two thirds from the war-news file
