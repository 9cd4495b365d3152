"""Adjudication of a double annotation: blind sheets of the disputed sentences, then the adjudicated file."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stanceclf.cli import app
from stanceclf.data.adjudication import disagreements, export_adjudication_sheets, merge_adjudicated
from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.data.readers import read_annotations, write_native
from stanceclf.data.schema import load_schema
from stanceclf.errors import AnnotationError, ChecksumMismatchError, InputFileError

TEXT = "One will fall. Two will rise. Three is here. Four is there."
OTHER = "Alpha warned of war. Beta is calm."
CLAIMS = load_schema("claim-types")
runner = CliRunner()


def span(text: str, phrase: str, label: str, who: str) -> Span:
    start = text.index(phrase)
    return Span(start, start + len(phrase), label, who)


def pair():
    """Two annotations of two documents that differ on sentence 1 and 2 of d1 and agree on d2."""
    first = [AnnotatedDocument("d1", TEXT, [span(TEXT, "One will fall.", "prediction", "a"),
                                            span(TEXT, "Two will", "prediction", "a")], ("a",)),
             AnnotatedDocument("d2", OTHER, [span(OTHER, "Alpha warned of war.", "threat_framing", "a")], ("a",))]
    second = [AnnotatedDocument("d1", TEXT, [span(TEXT, "One will fall.", "prediction", "b"),
                                             span(TEXT, "Three is here.", "policy_attribution", "b")], ("b",)),
              AnnotatedDocument("d2", OTHER, [span(OTHER, "Alpha warned", "threat_framing", "b")], ("b",))]
    return first, second


def test_adjudication_finds_the_sentences_whose_label_sets_differ():
    first, second = pair()
    found = disagreements(first, second, CLAIMS)
    assert [(d.doc_id, d.sentence_index, d.first, d.second) for d in found] == [
        ("d1", 1, ("prediction",), ()), ("d1", 2, (), ("policy_attribution",))]


def test_adjudication_sheet_marks_disputes_shows_both_sets_and_keys_them(tmp_path):
    first, second = pair()
    export_adjudication_sheets(first, second, CLAIMS, tmp_path, seed=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d1.offsets.json", "d1.sheet.txt", "key.jsonl"]
    sheet = (tmp_path / "d1.sheet.txt").read_text(encoding="utf-8").splitlines()
    assert "[0] One will fall." in sheet and "[3] Four is there." in sheet
    marked = sheet.index(">> [1] Two will rise.")
    shown = {sheet[marked + 1].split(":")[1].strip(), sheet[marked + 2].split(":")[1].strip()}
    assert shown == {"P", "-"} and sheet[marked + 1].strip().startswith("X:")
    key = [json.loads(line) for line in (tmp_path / "key.jsonl").read_text().splitlines()]
    assert [(k["doc_id"], k["sentence_index"]) for k in key] == [("d1", 1), ("d1", 2)]
    # the key says which annotation X was: check it against what the sheet shows
    x_of_1 = sheet[marked + 1].split(":")[1].strip()
    assert x_of_1 == ("P" if key[0]["X"] == "first" else "-")


def test_adjudication_order_of_x_and_y_varies_and_is_reproducible(tmp_path):
    text = " ".join(f"Sentence {i} will happen." for i in range(40))
    first = [AnnotatedDocument("d", text, [span(text, f"Sentence {i} will", "prediction", "a") for i in range(40)])]
    second = [AnnotatedDocument("d", text, [])]
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "one", seed=1)
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "two", seed=1)
    sides = [json.loads(line)["X"] for line in (tmp_path / "one" / "key.jsonl").read_text().splitlines()]
    assert 5 < sides.count("first") < 35  # not always the first annotation shown as X
    assert (tmp_path / "one" / "d.sheet.txt").read_text() == (tmp_path / "two" / "d.sheet.txt").read_text()


def test_adjudication_merge_keeps_agreed_labels_and_takes_the_decisions(tmp_path):
    first, second = pair()
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "sheets")
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "d1.tsv").write_text("1\t-\tno forecast\n2\tA,P\tboth\n", encoding="utf-8")
    merged = merge_adjudicated(first, second, tmp_path / "dec", tmp_path / "sheets", CLAIMS, "adj")
    d1, d2 = merged
    assert [(TEXT[s.start:s.end], s.label, s.annotator) for s in d1.spans] == [
        ("One will fall.", "prediction", "a"),
        ("Three is here.", "policy_attribution", "adj"), ("Three is here.", "prediction", "adj")]
    assert d1.annotators == ("a", "adj", "b")
    assert [(OTHER[s.start:s.end], s.label, s.annotator) for s in d2.spans] == [
        ("Alpha warned of war.", "threat_framing", "a")]
    assert d2.annotators == ("a", "b")  # nothing to adjudicate there
    assert disagreements(merged, first, CLAIMS)[0].sentence_index == 1


@pytest.mark.parametrize("content, message", [
    ("1\t-\n", r"no decision for the disputed sentences \[2\]"),
    ("1\t-\n2\tA\n0\tP\n", "sentence 0 is not in dispute"),
    ("1\t-\n1\tP\n2\tA\n", "sentence 1 is decided twice"),
    ("1\t-\n2\tQ\n", "unknown label 'Q'"),
    ("1\t\n2\tA\n", "no decision: write '-'"),
])
def test_adjudication_bad_decision_file_names_file_and_problem(tmp_path, content, message):
    first, second = pair()
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "sheets")
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "d1.tsv").write_text(content, encoding="utf-8")
    with pytest.raises(AnnotationError, match=message) as raised:
        merge_adjudicated(first, second, tmp_path / "dec", tmp_path / "sheets", CLAIMS, "adj")
    assert "d1.tsv" in str(raised.value)


def test_adjudication_missing_or_stray_decision_files_are_named(tmp_path):
    first, second = pair()
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "sheets")
    (tmp_path / "dec").mkdir()
    with pytest.raises(AnnotationError, match="in dispute have no decision file: d1"):
        merge_adjudicated(first, second, tmp_path / "dec", tmp_path / "sheets", CLAIMS, "adj")
    (tmp_path / "dec" / "d1.tsv").write_text("1\t-\n2\t-\n", encoding="utf-8")
    (tmp_path / "dec" / "d2.tsv").write_text("0\tT\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="not in dispute: d2"):
        merge_adjudicated(first, second, tmp_path / "dec", tmp_path / "sheets", CLAIMS, "adj")


def test_adjudication_sheet_of_another_text_is_refused(tmp_path):
    first, second = pair()
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "sheets")
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "d1.tsv").write_text("1\t-\n2\t-\n", encoding="utf-8")
    offsets = json.loads((tmp_path / "sheets" / "d1.offsets.json").read_text())
    offsets["checksum"] = "sha256:" + "0" * 64
    (tmp_path / "sheets" / "d1.offsets.json").write_text(json.dumps(offsets))
    with pytest.raises(ChecksumMismatchError, match="d1.offsets.json"):
        merge_adjudicated(first, second, tmp_path / "dec", tmp_path / "sheets", CLAIMS, "adj")


def test_adjudication_cli_round_trip_keeps_texts_referenced(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "d1.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"id": "d2", "text": OTHER}) + "\n", encoding="utf-8")
    first, second = pair()
    references = {"text_paths": {"d1": tmp_path / "texts" / "d1.txt"}, "corpus_records": {"d2": tmp_path / "corpus.jsonl"}}
    write_native(first, tmp_path / "first.jsonl", **references)
    write_native(second, tmp_path / "second.jsonl", **references)
    result = runner.invoke(app, ["adjudicate", "export", str(tmp_path / "first.jsonl"), str(tmp_path / "second.jsonl"),
                                 "-o", str(tmp_path / "sheets")])
    assert result.exit_code == 0, result.output
    assert "wrote 1 adjudication sheets with 2 disputed sentences" in result.output
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "d1.tsv").write_text("1\tP\n2\t-\n", encoding="utf-8")
    out = tmp_path / "labels" / "adjudicated.jsonl"
    out.parent.mkdir()
    result = runner.invoke(app, ["adjudicate", "import", str(tmp_path / "dec"), "--first", str(tmp_path / "first.jsonl"),
                                 "--second", str(tmp_path / "second.jsonl"), "--sheets", str(tmp_path / "sheets"),
                                 "--annotator", "adj", "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == ["../texts/d1.txt", "../corpus.jsonl"] and records[1]["record"] == "d2"
    assert all("text" not in r for r in records)
    documents = read_annotations("native", out, labels=CLAIMS.label_names)
    assert [(TEXT[s.start:s.end], s.label, s.annotator) for s in documents[0].spans] == [
        ("One will fall.", "prediction", "a"), ("Two will rise.", "prediction", "adj")]
    result = runner.invoke(app, ["adjudicate", "import", str(tmp_path / "nothing"), "--first", str(tmp_path / "first.jsonl"),
                                 "--second", str(tmp_path / "second.jsonl"), "--sheets", str(tmp_path / "sheets"),
                                 "--annotator", "adj", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "have no decision file: d1" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_adjudication_undecodable_decision_file_is_named(tmp_path):
    first, second = pair()
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "sheets")
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "d1.tsv").write_bytes(b"1\t-\n2\t\xff\n")
    with pytest.raises(InputFileError, match=r"d1.tsv.*cannot read the decision file"):
        merge_adjudicated(first, second, tmp_path / "dec", tmp_path / "sheets", CLAIMS, "adj")
