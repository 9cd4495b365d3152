"""Adjudication of a double annotation: blind sheets of the disputed sentences, then the adjudicated file."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stanceclf.cli import app
from stanceclf.data.adjudication import disagreements, export_adjudication_sheets, merge_adjudicated
from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.data.dataset import BuildConfig
from stanceclf.data.readers import read_annotations, stored_references, write_native
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


def exported(tmp_path, decision: str | None = "1\t-\n2\t-\n"):
    """The pair's adjudication sheets in ``sheets/`` and, unless None, ``decision`` as d1's file in ``dec/``;
    returns merge_adjudicated of them, by the adjudicator it is given."""
    first, second = pair()
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "sheets", tmp_path / "key.jsonl")
    (tmp_path / "dec").mkdir()
    if decision is not None:
        (tmp_path / "dec" / "d1.tsv").write_text(decision, encoding="utf-8")
    return lambda who="adj": merge_adjudicated(first, second, tmp_path / "dec", tmp_path / "sheets", CLAIMS, who)


def test_adjudication_finds_the_sentences_whose_label_sets_differ():
    first, second = pair()
    found = disagreements(first, second, CLAIMS)
    assert [(d.doc_id, d.sentence_index, d.first, d.second) for d in found] == [
        ("d1", 1, ("prediction",), ()), ("d1", 2, (), ("policy_attribution",))]


def test_adjudication_sheet_marks_disputes_shows_both_sets_and_keys_them(tmp_path):
    first, second = pair()
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "sheets", tmp_path / "key.jsonl", seed=3)
    assert sorted(p.name for p in (tmp_path / "sheets").iterdir()) == ["d1.offsets.json", "d1.sheet.txt"]
    sheet = (tmp_path / "sheets" / "d1.sheet.txt").read_text(encoding="utf-8").splitlines()
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
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "one", tmp_path / "one.key.jsonl", seed=1)
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "two", tmp_path / "two.key.jsonl", seed=1)
    sides = [json.loads(line)["X"] for line in (tmp_path / "one.key.jsonl").read_text().splitlines()]
    assert 5 < sides.count("first") < 35  # not always the first annotation shown as X
    assert (tmp_path / "one" / "d.sheet.txt").read_text() == (tmp_path / "two" / "d.sheet.txt").read_text()


def test_adjudication_merge_keeps_agreed_labels_and_takes_the_decisions(tmp_path):
    first, second = pair()
    export_adjudication_sheets(first, second, CLAIMS, tmp_path / "sheets", tmp_path / "key.jsonl")
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "d1.tsv").write_text("1\t-\tno forecast\n2\tA,P\tboth\n", encoding="utf-8")
    merged, reasons = merge_adjudicated(first, second, tmp_path / "dec", tmp_path / "sheets", CLAIMS, "adj")
    d1, d2 = merged
    assert reasons == [
        {"doc_id": "d1", "sentence_index": 1, "labels": [], "reason": "no forecast", "adjudicator": "adj"},
        {"doc_id": "d1", "sentence_index": 2, "labels": ["prediction", "policy_attribution"], "reason": "both",
         "adjudicator": "adj"}]
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
    merge = exported(tmp_path, content)
    with pytest.raises(AnnotationError, match=message) as raised:
        merge()
    assert "d1.tsv" in str(raised.value)


def test_adjudication_missing_or_stray_decision_files_are_named(tmp_path):
    merge = exported(tmp_path, None)
    with pytest.raises(AnnotationError, match="in dispute have no decision file: d1"):
        merge()
    (tmp_path / "dec" / "d1.tsv").write_text("1\t-\n2\t-\n", encoding="utf-8")
    (tmp_path / "dec" / "d2.tsv").write_text("0\tT\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="not in dispute: d2"):
        merge()


def test_adjudication_sheet_of_another_text_is_refused(tmp_path):
    merge = exported(tmp_path)
    offsets = json.loads((tmp_path / "sheets" / "d1.offsets.json").read_text())
    offsets["checksum"] = "sha256:" + "0" * 64
    (tmp_path / "sheets" / "d1.offsets.json").write_text(json.dumps(offsets))
    with pytest.raises(ChecksumMismatchError, match="d1.offsets.json"):
        merge()


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
    assert (tmp_path / "sheets.key.jsonl").is_file() and not list((tmp_path / "sheets").glob("*key*"))
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
    reasons = [json.loads(line) for line in (tmp_path / "labels" / "adjudicated.jsonl.reasons.jsonl").read_text().splitlines()]
    assert [(r["sentence_index"], r["labels"]) for r in reasons] == [(1, ["prediction"]), (2, [])]
    result = runner.invoke(app, ["adjudicate", "import", str(tmp_path / "nothing"), "--first", str(tmp_path / "first.jsonl"),
                                 "--second", str(tmp_path / "second.jsonl"), "--sheets", str(tmp_path / "sheets"),
                                 "--annotator", "adj", "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "have no decision file: d1" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_adjudication_undecodable_decision_file_is_named(tmp_path):
    merge = exported(tmp_path, None)
    (tmp_path / "dec" / "d1.tsv").write_bytes(b"1\t-\n2\t\xff\n")
    with pytest.raises(InputFileError, match=r"d1.tsv.*cannot read the decision file"):
        merge()


def test_adjudication_key_inside_the_sheets_folder_is_refused(tmp_path):
    first, second = pair()
    with pytest.raises(AnnotationError, match="keep it outside the folder of sheets"):
        export_adjudication_sheets(first, second, CLAIMS, tmp_path / "sheets", tmp_path / "sheets" / "key.jsonl")


def test_adjudication_document_annotated_once_is_an_error_naming_it(tmp_path):
    first, second = pair()
    extra = AnnotatedDocument("d3", "Only here.", [], ("a",))
    with pytest.raises(AnnotationError, match=r"first.jsonl.*only here.*: d3"):
        disagreements([*first, extra], second, CLAIMS, names=("first.jsonl", "second.jsonl"))
    with pytest.raises(AnnotationError, match=r"second.jsonl.*only here.*: d3"):
        export_adjudication_sheets(first, [*second, extra], CLAIMS, tmp_path / "s", tmp_path / "k.jsonl",
                                   names=("first.jsonl", "second.jsonl"))


def test_adjudication_adjudicator_must_not_be_an_annotator(tmp_path):
    merge = exported(tmp_path)
    with pytest.raises(AnnotationError, match="third reader"):
        merge("b")


def test_adjudication_sheet_of_other_sentences_is_refused(tmp_path):
    merge = exported(tmp_path)
    offsets = json.loads((tmp_path / "sheets" / "d1.offsets.json").read_text())
    offsets["sentences"] = offsets["sentences"][:2]
    (tmp_path / "sheets" / "d1.offsets.json").write_text(json.dumps(offsets))
    with pytest.raises(AnnotationError, match=r"d1.offsets.json.*not the splitter's now"):
        merge()
    (tmp_path / "sheets" / "d1.offsets.json").write_text("[1, 2]")
    with pytest.raises(AnnotationError, match=r"d1.offsets.json.*not a sheet's offsets file"):
        merge()


def test_adjudication_agreed_label_keeps_the_annotator_whose_span_gave_it(tmp_path):
    """Two annotators merged into the first file: each agreed sentence names the one whose span labels it
    by the builder's rule, not one that merely touches the sentence."""
    first = [AnnotatedDocument("d", TEXT, [span(TEXT, "One will fall. Two", "prediction", "a1"),
                                           span(TEXT, "Two will rise.", "prediction", "a2")], ("a1", "a2"))]
    second = [AnnotatedDocument("d", TEXT, [span(TEXT, "One will fall.", "prediction", "b"),
                                            span(TEXT, "Two will rise.", "prediction", "b")], ("b",))]
    config = BuildConfig(min_overlap_chars=5)
    merged, reasons = merge_adjudicated(first, second, tmp_path / "none", tmp_path, CLAIMS, "adj", config=config)
    assert reasons == []
    assert [(TEXT[s.start:s.end], s.annotator) for s in merged[0].spans] == [
        ("One will fall.", "a1"), ("Two will rise.", "a2")]


def test_adjudication_corpus_record_under_another_id_is_not_copied_inline(tmp_path):
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "r7", "text": OTHER}) + "\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(json.dumps({"doc_id": "d2", "path": "c.jsonl", "record": "r7", "spans": []})
                                      + "\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"a.jsonl:1.*corpus record 'r7'"):
        stored_references(tmp_path / "a.jsonl")
