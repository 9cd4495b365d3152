"""Sentence sheets for annotating whole articles by hand, and reading the decisions back."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stanceclf.data.sheets import export_sheets, import_decisions, label_codes
from stanceclf.cli import app
from stanceclf.errors import AnnotationError
from stanceclf.data.schema import LabelSchema, load_schema

TEXT = "NATO will expand again. Moscow warned of a dangerous escalation.\nThe summit opened on Monday."
runner = CliRunner()


def test_annotation_sheets_codes_of_claim_types():
    assert label_codes(load_schema("claim-types")) == {"P": "prediction", "T": "threat_framing",
                                                       "A": "policy_attribution"}


def test_annotation_sheets_codes_stay_distinct_when_a_preferred_letter_is_wanted_twice():
    schema = LabelSchema.from_labels(["attack", "policy_attribution", "prediction", "proposal"])
    codes = label_codes(schema)
    assert sorted(codes.values()) == sorted(schema.label_names)
    assert codes["A"] == "policy_attribution" and codes["P"] == "prediction"


def test_annotation_sheets_round_trip_with_byte_order_mark(tmp_path):
    export_sheets({"doc1": TEXT}, tmp_path)
    sheet = (tmp_path / "doc1.sheet.txt").read_text(encoding="utf-8")
    assert "# codes: P=prediction, T=threat_framing, A=policy_attribution" in sheet
    assert "[1] Moscow warned of a dangerous escalation." in sheet
    (tmp_path / "doc1.tsv").write_text("\ufeff0\tP\n1\tT\tloaded wording\n2\t-\n", encoding="utf-8")
    document, notes = import_decisions(tmp_path / "doc1.tsv", tmp_path / "doc1.offsets.json", TEXT,
                                       load_schema("claim-types"), "reader-1")
    assert [(TEXT[s.start:s.end], s.label, s.annotator) for s in document.spans] == [
        ("NATO will expand again.", "prediction", "reader-1"),
        ("Moscow warned of a dangerous escalation.", "threat_framing", "reader-1")]
    assert notes == {1: "loaded wording"}


def test_annotation_sheets_bad_offsets_file_names_it(tmp_path):
    (tmp_path / "doc1.offsets.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "doc1.tsv").write_text("0\tP\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match=r"\[E002\].*doc1.offsets.json.*cannot read"):
        import_decisions(tmp_path / "doc1.tsv", tmp_path / "doc1.offsets.json", TEXT, load_schema("claim-types"),
                         "r")


def test_annotation_sheets_cli_errors_carry_codes(tmp_path):
    result = runner.invoke(app, ["sheets", "export", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "[E006]" in result.output and "nope.txt" in result.output
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9")
    result = runner.invoke(app, ["sheets", "export", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "[E006]" in result.output and "not valid UTF-8" in result.output
    result = runner.invoke(app, ["sheets", "import", str(tmp_path / "empty"), "--sheets", str(tmp_path),
                                 "--texts", str(tmp_path), "--annotator", "r", "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "[E006]" in result.output and "no <doc_id>.tsv" in result.output


def test_annotation_sheets_cli_round_trip_writes_stand_off(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "doc1.txt").write_text(TEXT, encoding="utf-8")
    assert runner.invoke(app, ["sheets", "export", str(texts), "--out", str(tmp_path / "sheets")]).exit_code == 0
    decisions = tmp_path / "decisions"
    decisions.mkdir()
    (decisions / "doc1.tsv").write_text("0\tP\n1\t-\n2\t-\n", encoding="utf-8")
    result = runner.invoke(app, ["sheets", "import", str(decisions), "--sheets", str(tmp_path / "sheets"),
                                 "--texts", str(texts), "--annotator", "reader-1", "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert "text" not in record and record["spans"][0]["label"] == "prediction"


def test_annotation_sheets_loop_over_a_jsonl_pool_keeps_texts_by_reference(tmp_path, tiny_model_dir):
    """The annotation loop on a pool of JSONL documents, as a user runs it: blind tasks from suggest, sheets
    from the tasks, decisions, an import that names each document by the pool file and its record id (no
    text copied), and a dataset built from that stand-off file. A changed pool record is then refused."""
    from stanceclf.data.readers import read_annotations

    pool = tmp_path / "pool.jsonl"
    records = [{"id": "n1", "outlet": "x", "text": TEXT}, {"id": 7, "text": "Markets will fall. Rain is coming."},
               {"id": "n3", "text": "The summit opened on Monday."}]
    pool.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tasks = tmp_path / "round.json"
    result = runner.invoke(app, ["suggest", str(pool), "--model", str(tiny_model_dir), "--n", "2", "--blind",
                                 "--strategy", "random", "--out", str(tasks), "--no-progress"])
    assert result.exit_code == 0, result.output
    picked = [task["data"]["doc_id"] for task in json.loads(tasks.read_text())]
    result = runner.invoke(app, ["sheets", "export", str(tasks), "--out", str(tmp_path / "sheets")])
    assert result.exit_code == 0, result.output
    decisions = tmp_path / "decisions"
    decisions.mkdir()
    for doc_id in picked:
        sentences = json.loads((tmp_path / "sheets" / f"{doc_id}.offsets.json").read_text())["sentences"]
        lines = ["0\tP"] + [f"{i}\t-" for i in range(1, len(sentences))]
        (decisions / f"{doc_id}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "labels" / "round.jsonl"
    out.parent.mkdir()
    result = runner.invoke(app, ["sheets", "import", str(decisions), "--sheets", str(tmp_path / "sheets"),
                                 "--corpus", str(pool), "--annotator", "reader-1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    stored = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["record"] for r in stored} == set(picked) and all(r["path"] == "../pool.jsonl" for r in stored)
    assert all("text" not in r for r in stored)
    documents = read_annotations("native", out, labels=["prediction", "threat_framing", "policy_attribution"])
    texts = {str(r["id"]): r["text"] for r in records}
    assert {d.doc_id: d.text for d in documents} == {doc_id: texts[doc_id] for doc_id in picked}
    assert all(d.spans[0].label == "prediction" and d.spans[0].start == 0 for d in documents)
    result = runner.invoke(app, ["build-dataset", str(out), "--format", "native", "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output

    records[0]["text"] = records[0]["text"].replace("NATO", "The alliance")
    records[1]["text"] += " Later."
    pool.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with pytest.raises(Exception) as refused:
        read_annotations("native", out, labels=["prediction"])
    assert "checksum" in str(refused.value)
    stored[0]["record"] = "missing"
    (tmp_path / "labels" / "bad.jsonl").write_text(json.dumps(stored[0]) + "\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="no record with id 'missing'"):
        read_annotations("native", tmp_path / "labels" / "bad.jsonl", labels=["prediction"])


def test_annotation_sheets_corpus_records_are_named_as_score_names_them(tmp_path):
    """A pool document is found by the id score and suggest give it: FILE:LINE without an id, the first of a
    repeated id, a byte-order mark dropped, a bad line passed over; an id in two pools is refused."""
    from stanceclf.data.corpus_inputs import read_corpus_texts
    from stanceclf.data.sheets import import_decision_folder

    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(("\ufeff" + "\n".join([json.dumps({"id": 1, "text": "First."}), "not json",
                                            json.dumps({"text": "No id here."}), json.dumps({"id": "1", "text": "Later."}),
                                            json.dumps({"id": "x", "body": "no text field"})]) + "\n").encode("utf-8"))
    assert read_corpus_texts(pool) == {"1": "First.", "pool:3": "No id here."}
    assert read_corpus_texts(pool, {"pool:3"}) == {"pool:3": "No id here."}

    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "1", "text": "First."}) + "\n", encoding="utf-8")
    export_sheets({"1": "First."}, tmp_path / "sheets")
    (tmp_path / "decisions").mkdir()
    (tmp_path / "decisions" / "1.tsv").write_text("0\tP\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="in two corpus files"):
        import_decision_folder(tmp_path / "decisions", tmp_path / "sheets", load_schema("claim-types"), "r",
                               corpora=[pool, other])
    documents, _, records = import_decision_folder(tmp_path / "decisions", tmp_path / "sheets",
                                                   load_schema("claim-types"), "r", corpora=[pool])
    assert records == {"1": pool} and documents[0].spans[0].label == "prediction"
