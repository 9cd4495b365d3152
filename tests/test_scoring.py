"""Corpus scoring: inputs, outputs, bad records, resumption after an interruption."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import interrupt_on_call
from stanceclf.errors import InputRecordError, ResumeError, ScoringSetupError, StanceclfError
from stanceclf.infer.model import StanceModel
from stanceclf.infer.scoring import PROGRESS_SUFFIX, score_corpus
from stanceclf.infer.scoring.state import OutputPaths

ARTICLE = ("NATO will expand again. Moscow warned of a dangerous escalation.\n"
           "The summit opened on Monday in Vilnius.")


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture
def tiny_model(tiny_model_dir):
    return StanceModel.from_pretrained(tiny_model_dir)


def test_scoring_jsonl_to_jsonl_one_row_per_sentence(tmp_path, tiny_model):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": ARTICLE}, {"id": "b", "text": "One more."}])
    out = tmp_path / "out.jsonl"
    summary = score_corpus([source], out, tiny_model, progress=False)
    rows = read_jsonl(out)
    assert [(r["doc_id"], r["sentence_index"]) for r in rows] == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert rows[1]["text"] == "Moscow warned of a dangerous escalation."
    assert ARTICLE[rows[2]["start"]:rows[2]["end"]] == rows[2]["text"]
    assert {"score_prediction", "score_threat_framing", "score_policy_attribution", "labels"} <= set(rows[0])
    assert summary.documents == 2 and summary.sentences == 4
    assert not (tmp_path / ("out.jsonl" + PROGRESS_SUFFIX)).exists()


def test_scoring_custom_fields_csv_and_parquet_outputs(tmp_path, tiny_model):
    import pandas as pd

    source = write_jsonl(tmp_path / "in.jsonl", [{"doc": "x1", "body": ARTICLE}])
    score_corpus([source], tmp_path / "o.csv", tiny_model, id_field="doc", text_field="body", progress=False)
    with open(tmp_path / "o.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["doc_id"] for r in rows] == ["x1"] * 3
    score_corpus([source], tmp_path / "o.parquet", tiny_model, id_field="doc", text_field="body", progress=False)
    frame = pd.read_parquet(tmp_path / "o.parquet")
    assert list(frame["sentence_index"]) == [0, 1, 2]
    assert not (tmp_path / "o.parquet.partial").exists()


def test_scoring_reads_txt_folders_csv_and_parquet_inputs(tmp_path, tiny_model):
    import pandas as pd

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.txt").write_text(ARTICLE, encoding="utf-8")
    (folder / "sub" / "two.txt").write_text("Short text.", encoding="utf-8")
    score_corpus([folder], tmp_path / "t.jsonl", tiny_model, progress=False)
    assert [r["doc_id"] for r in read_jsonl(tmp_path / "t.jsonl")] == ["one"] * 3 + ["sub/two"]
    pd.DataFrame({"id": ["p"], "text": [ARTICLE]}).to_csv(tmp_path / "in.csv", index=False)
    pd.DataFrame({"id": ["q"], "text": [ARTICLE]}).to_parquet(tmp_path / "in.parquet")
    score_corpus([tmp_path / "in.csv", tmp_path / "in.parquet"], tmp_path / "m.jsonl", tiny_model, progress=False)
    assert [r["doc_id"] for r in read_jsonl(tmp_path / "m.jsonl")] == ["p"] * 3 + ["q"] * 3


def test_scoring_per_document_counts_and_shares(tmp_path, make_tiny_model):
    model = make_tiny_model(thresholds={"prediction": 0.0, "threat_framing": 1.01, "policy_attribution": 1.01})
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": ARTICLE}])
    score_corpus([source], tmp_path / "d.jsonl", model, per_document=True, progress=False)
    (row,) = read_jsonl(tmp_path / "d.jsonl")
    assert row == {"doc_id": "a", "sentences": 3, "n_prediction": 3, "n_threat_framing": 0,
                   "n_policy_attribution": 0, "share_prediction": 1.0, "share_threat_framing": 0.0,
                   "share_policy_attribution": 0.0}


BAD_RECORDS = [
    ({"id": "e", "text": ""}, "empty or whitespace"),
    ({"id": "w", "text": "   \n "}, "empty or whitespace"),
    ({"id": "m", "body": "no text field"}, "missing field 'text'"),
    ({"id": "n", "text": None}, "text is null"),
    ({"id": "big", "text": "word " * 1_000_001}, "above the limit"),
]


@pytest.mark.parametrize("record,message", BAD_RECORDS, ids=[r[0]["id"] for r in BAD_RECORDS])
def test_scoring_bad_record_stops_with_its_name(tmp_path, tiny_model, record, message):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "ok", "text": ARTICLE}, record])
    with pytest.raises(InputRecordError, match=message) as info:
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False)
    assert "in.jsonl:2" in str(info.value) and "record 1" in str(info.value)
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written under the final name


def test_scoring_bad_records_skipped_are_logged_not_dropped_silently(tmp_path, tiny_model):
    source = tmp_path / "in.jsonl"
    with open(source, "wb") as handle:
        handle.write(json.dumps({"id": "ok", "text": ARTICLE}).encode() + b"\n")
        handle.write(b'{"id": "latin1", "text": "caf\xe9"}\n')
        for record, _ in BAD_RECORDS:
            handle.write(json.dumps(record).encode() + b"\n")
        handle.write(json.dumps({"id": "last", "text": "Fine again."}).encode() + b"\n")
    out = tmp_path / "o.jsonl"
    summary = score_corpus([source], out, tiny_model, on_error="skip", progress=False)
    assert summary.skipped == 6
    assert [r["doc_id"] for r in read_jsonl(out)] == ["ok"] * 3 + ["last"]
    errors = read_jsonl(tmp_path / "o.jsonl.errors.jsonl")
    assert [e["doc_id"] for e in errors] == ["latin1", "e", "w", "m", "n", "big"]
    assert "not valid UTF-8" in errors[0]["error"]


def test_scoring_empty_input_file_is_an_error_and_writes_nothing(tmp_path, tiny_model):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputRecordError, match="nothing was scored.*no records"):
        score_corpus([tmp_path / "empty.jsonl"], tmp_path / "o.jsonl", tiny_model, progress=False)
    assert not list(tmp_path.glob("o.jsonl*"))


def test_scoring_refuses_to_overwrite_complete_output(tmp_path, tiny_model):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": ARTICLE}])
    score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False)
    with pytest.raises(StanceclfError, match="--overwrite"):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False)
    score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False, overwrite=True)
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 3


def test_scoring_is_deterministic(tmp_path, tiny_model):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "text": ARTICLE * (i % 3 + 1)} for i in range(20)])
    score_corpus([source], tmp_path / "a.jsonl", tiny_model, progress=False, chunk_sentences=7)
    score_corpus([source], tmp_path / "b.jsonl", tiny_model, progress=False, chunk_sentences=7)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_scoring_refuses_to_resume_with_another_backend(tmp_path, tiny_model, monkeypatch):
    """bf16 scores differ slightly from fp32: one output must not mix the two."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "text": ARTICLE} for i in range(40)])
    real_predict = interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=2)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False, chunk_sentences=30)
    monkeypatch.setattr(StanceModel, "proba_and_truncation", real_predict)
    with pytest.raises(ResumeError, match="the backend was torch, now bf16: rerun with the interrupted run's"):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model.accelerated("bf16"), progress=False,
                     chunk_sentences=30)
    summary = score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False, chunk_sentences=30)
    assert summary.resumed_from > 0
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 120


def test_resumed_scoring_in_a_log_counts_on_from_the_sentences_already_done(tmp_path, tiny_model, monkeypatch,
                                                                            capsys):
    from stanceclf import progress

    source = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "text": ARTICLE} for i in range(40)])
    real_predict = interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=2)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False, chunk_sentences=30)
    monkeypatch.setattr(StanceModel, "proba_and_truncation", real_predict)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)  # a line at every chunk
    capsys.readouterr()
    summary = score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=True, chunk_sentences=30)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scoring: ")]
    assert summary.resumed_sentences > 0
    assert lines[0].startswith(f"scoring: {summary.resumed_sentences} sent ["), lines[0]
    assert lines[-1].startswith("scoring: 120 sent [") and "docs=40" in lines[-1], lines[-1]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_scoring_resumes_after_kill_without_lost_or_duplicated_rows(tmp_path, tiny_model_dir, fmt):
    records = [{"id": f"doc{i:04d}", "text": f"Document {i} says NATO will grow. " + ARTICLE} for i in range(1500)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / f"out.{fmt}"
    command = [sys.executable, "-m", "stanceclf.cli", "score", str(source), "--out", str(out),
               "--model", str(tiny_model_dir), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress_file = tmp_path / f"out.{fmt}{PROGRESS_SUFFIX}"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if progress_file.exists() and json.loads(progress_file.read_text())["records_done"] > 0:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted: make the corpus larger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    done_before = json.loads(progress_file.read_text())["records_done"]
    assert 0 < done_before < len(records)
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "resuming after" in finished.stderr
    if fmt == "jsonl":
        rows = read_jsonl(out)
    elif fmt == "csv":
        with open(out, encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        import pandas as pd

        rows = pd.read_parquet(out).to_dict("records")
    keys = [(r["doc_id"], int(r["sentence_index"])) for r in rows]
    assert len(keys) == len(set(keys)) == 1500 * 4
    assert [k[0] for k in keys[::4]] == [r["id"] for r in records]
    if fmt == "jsonl":  # byte-identical to an uninterrupted run
        clean = tmp_path / "clean.jsonl"
        subprocess.run([*command[:6], str(clean), *command[7:]], env=env, check=True, capture_output=True)
        assert clean.read_bytes() == out.read_bytes()



def test_scoring_parquet_output_when_some_chunks_have_no_labels(tmp_path, tiny_model, monkeypatch):
    import numpy as np
    import pandas as pd

    real = StanceModel.proba_and_truncation

    def labels_only_for_nato(self, texts, **kwargs):
        probs, truncated = real(self, texts, **kwargs)
        return np.array([[0.99 if "NATO" in t else 0.01] * probs.shape[1] for t in texts]), truncated

    monkeypatch.setattr(StanceModel, "proba_and_truncation", labels_only_for_nato)
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "NATO will grow."}, {"id": "b", "text": "Calm."}])
    score_corpus([source], tmp_path / "o.parquet", tiny_model, progress=False, chunk_sentences=1)
    frame = pd.read_parquet(tmp_path / "o.parquet")
    assert list(frame["doc_id"]) == ["a", "b"]
    assert list(frame["labels"][0]) == tiny_model.labels and list(frame["labels"][1]) == []


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_scoring_interrupted_while_finishing_resumes_without_duplicates(tmp_path, tiny_model, monkeypatch, fmt):
    import pandas as pd

    from stanceclf.infer.scoring.outputs import OUTPUT_FORMATS

    source = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "text": f"Sentence {i}."} for i in range(3)])
    out = tmp_path / f"o.{fmt}"
    writer = OUTPUT_FORMATS[fmt]
    real = interrupt_on_call(monkeypatch, writer, "finish", after=1)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], out, tiny_model, progress=False, chunk_sentences=1)
    monkeypatch.setattr(writer, "finish", real)
    score_corpus([source], out, tiny_model, progress=False, chunk_sentences=1)
    ids = [r["doc_id"] for r in read_jsonl(out)] if fmt == "jsonl" else list(pd.read_parquet(out)["doc_id"])
    assert ids == ["0", "1", "2"]


def test_scoring_killed_after_output_renamed_finishes_cleanly(tmp_path, tiny_model, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": ARTICLE}])
    out = tmp_path / "o.jsonl"
    interrupt_on_call(monkeypatch, OutputPaths, "publish_errors", after=1)  # right after the output's rename
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], out, tiny_model, progress=False)
    monkeypatch.undo()
    assert out.exists() and (tmp_path / ("o.jsonl" + PROGRESS_SUFFIX)).exists()
    summary = score_corpus([source], out, tiny_model, progress=False)
    assert summary.sentences == 3 and len(read_jsonl(out)) == 3
    assert not (tmp_path / ("o.jsonl" + PROGRESS_SUFFIX)).exists()


def test_scoring_unpaired_surrogate_is_a_bad_record_not_a_crash(tmp_path, tiny_model):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "text": "Fine."}\n{"id": "b", "text": "bad \\ud800 text"}\n', encoding="utf-8")
    with pytest.raises(InputRecordError, match=r"id 'b'.*unpaired surrogate"):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False)
    summary = score_corpus([source], tmp_path / "o2.jsonl", tiny_model, progress=False, on_error="skip")
    assert summary.skipped == 1 and len(read_jsonl(tmp_path / "o2.jsonl")) == 1


def test_scoring_resumes_when_output_lies_inside_the_input_folder(tmp_path, tiny_model, monkeypatch):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(6):
        (folder / f"d{i}.txt").write_text(ARTICLE, encoding="utf-8")
    out = folder / "scores.jsonl"
    real = interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=3)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([folder], out, tiny_model, progress=False, chunk_sentences=3)
    monkeypatch.setattr(StanceModel, "proba_and_truncation", real)
    summary = score_corpus([folder], out, tiny_model, progress=False, chunk_sentences=3)
    assert summary.resumed_from == 2
    assert [r["doc_id"] for r in read_jsonl(out)] == [f"d{i}" for i in range(6) for _ in range(3)]


def test_scoring_refuses_to_resume_after_the_model_changed_in_place(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "text": ARTICLE} for i in range(4)])
    real = interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=2)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], tmp_path / "o.jsonl", StanceModel.from_pretrained(model_dir), progress=False,
                     chunk_sentences=3)
    monkeypatch.setattr(StanceModel, "proba_and_truncation", real)
    manifest = json.loads((model_dir / "stanceclf.json").read_text())
    manifest["thresholds"] = {label: 0.3 for label in manifest["thresholds"]}
    (model_dir / "stanceclf.json").write_text(json.dumps(manifest))
    with pytest.raises(ResumeError, match="the model's weights or manifest changed: .* pass --overwrite"):
        score_corpus([source], tmp_path / "o.jsonl", StanceModel.from_pretrained(model_dir), progress=False,
                     chunk_sentences=3)


def test_scoring_fresh_run_starts_a_fresh_error_log(tmp_path, tiny_model):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": ARTICLE}, {"id": "b", "text": ""}])
    (tmp_path / "o.jsonl.errors.jsonl.partial").write_text('{"record": 1, "left": "by a run killed early"}\n')
    summary = score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False, on_error="skip")
    assert summary.skipped == 1
    assert len((tmp_path / "o.jsonl.errors.jsonl").read_text().splitlines()) == 1


def test_scoring_byte_order_mark_in_csv_jsonl_and_txt(tmp_path, tiny_model):
    (tmp_path / "in.csv").write_bytes("\ufeffid,text\nc1,NATO will grow.\n".encode("utf-8"))
    (tmp_path / "in.jsonl").write_bytes(("\ufeff" + json.dumps({"id": "j1", "text": "NATO will grow."}) + "\n")
                                        .encode("utf-8"))
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "t1.txt").write_bytes("\ufeffNATO will grow.".encode("utf-8"))
    for name in ("in.csv", "in.jsonl", "txt"):
        score_corpus([tmp_path / name], tmp_path / f"{name}.out.jsonl", tiny_model, progress=False)
        rows = read_jsonl(tmp_path / f"{name}.out.jsonl")
        assert len(rows) == 1 and rows[0]["doc_id"] in ("c1", "j1", "t1") and rows[0]["text"] == "NATO will grow."


@pytest.mark.parametrize("kwargs, message", [
    ({"paths": ["nope.jsonl"]}, "input not found"),
    ({"input_format": "xml"}, "field 'input_format'"),
    ({"out": "missing-folder/o.jsonl"}, "the output's folder does not exist"),
    ({"out": "o.txt"}, "end it in .jsonl, .csv or .parquet"),
    ({"batch_size": 0}, "field 'batch_size'"),
])
def test_scoring_unusable_setup_is_refused_before_anything_is_written(tmp_path, tiny_model, kwargs, message):
    from stanceclf.errors import ScoringSetupError

    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": ARTICLE}])
    arguments = {"paths": ["in.jsonl"], "out": "o.jsonl", **kwargs}
    with pytest.raises(ScoringSetupError, match=message):
        score_corpus([tmp_path / p for p in arguments.pop("paths")], tmp_path / arguments.pop("out"), tiny_model,
                     progress=False, **arguments)
    assert not list(tmp_path.glob("o*"))


def test_scoring_explicit_id_field_missing_is_a_bad_record(tmp_path, tiny_model):
    source = write_jsonl(tmp_path / "in.jsonl", [{"url": "u1", "text": ARTICLE}, {"text": ARTICLE}])
    with pytest.raises(InputRecordError, match="record 1.*missing id field 'url'"):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, id_field="url", progress=False)
    score_corpus([source], tmp_path / "o2.jsonl", tiny_model, progress=False)  # no id field asked for
    assert [r["doc_id"] for r in read_jsonl(tmp_path / "o2.jsonl")][::3] == ["in:1", "in:2"]


# ---- runs that score nothing fail; ids are unique (issue: "runs that score nothing succeed") -----------------


def test_scoring_text_folder_reads_any_case_of_txt_and_text(tmp_path, tiny_model):
    folder = tmp_path / "upper"
    folder.mkdir()
    for name in ("A.TXT", "b.text", "c.Txt", "d.TEXT"):
        (folder / name).write_text(f"Document {name} says NATO will grow.", encoding="utf-8")
    (folder / "notes.md").write_text("Not a document.", encoding="utf-8")
    summary = score_corpus([folder], tmp_path / "o.jsonl", tiny_model, progress=False)
    assert summary.documents == 4
    assert [r["doc_id"] for r in read_jsonl(tmp_path / "o.jsonl")] == ["A", "b", "c", "d"]


def test_scoring_every_record_skipped_is_an_error_and_writes_no_output(tmp_path, tiny_model):
    (tmp_path / "in.csv").write_text("id,body\n1,NATO will expand.\n2,Moscow warned.\n", encoding="utf-8")
    with pytest.raises(InputRecordError, match=r"nothing was scored.*all 2 records were skipped"):
        score_corpus([tmp_path / "in.csv"], tmp_path / "o.jsonl", tiny_model, on_error="skip", progress=False)
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob("o.jsonl.p*"))
    errors = read_jsonl(tmp_path / "o.jsonl.errors.jsonl")
    assert [e["error"] for e in errors] == ["missing field 'text' (fields: ['body', 'id'])"] * 2


def test_scoring_duplicate_ids_are_bad_records(tmp_path, tiny_model):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "text": ARTICLE}, {"id": "y", "text": "Fine."},
                                                  {"id": "x", "text": "Another text under the same id."}])
    with pytest.raises(InputRecordError, match=r"record 2 \(.*in.jsonl:3, id 'x'\): duplicate document id 'x' "
                                               r"\(first at .*in.jsonl:1\)"):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False)
    summary = score_corpus([source], tmp_path / "s.jsonl", tiny_model, on_error="skip", progress=False)
    keys = [(r["doc_id"], r["sentence_index"]) for r in read_jsonl(tmp_path / "s.jsonl")]
    assert summary.skipped == 1 and len(keys) == len(set(keys)) == 4
    assert "duplicate document id 'x'" in read_jsonl(tmp_path / "s.jsonl.errors.jsonl")[0]["error"]


def test_scoring_duplicate_id_of_a_record_done_before_an_interruption_is_still_caught(tmp_path, tiny_model,
                                                                                      monkeypatch):
    records = [{"id": f"d{i}", "text": ARTICLE} for i in range(6)] + [{"id": "d0", "text": ARTICLE}]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    real = interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=3)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False, chunk_sentences=3)
    monkeypatch.setattr(StanceModel, "proba_and_truncation", real)
    with pytest.raises(InputRecordError, match="duplicate document id 'd0'"):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False, chunk_sentences=3)


# ---- following an error's advice keeps finished work ---------------------------------------------------------


def _stopped_then_resumed(tmp_path, tiny_model, records, first: dict, second: dict, message: str):
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "o.jsonl"
    with pytest.raises(InputRecordError, match=message):
        score_corpus([source], out, tiny_model, progress=False, chunk_sentences=3, **first)
    done = json.loads((tmp_path / f"o.jsonl{PROGRESS_SUFFIX}").read_text())["records_done"]
    assert done > 0, "the stopped run had finished some work"
    summary = score_corpus([source], out, tiny_model, progress=False, chunk_sentences=3, **second)
    assert summary.resumed_from == done
    return summary, read_jsonl(out)


def test_scoring_rerun_with_a_higher_max_chars_resumes_instead_of_starting_over(tmp_path, tiny_model):
    records = ([{"id": f"a{i}", "text": ARTICLE} for i in range(5)] + [{"id": "long", "text": "\n".join([ARTICLE] * 3)}]
               + [{"id": f"b{i}", "text": ARTICLE} for i in range(3)])
    summary, rows = _stopped_then_resumed(tmp_path, tiny_model, records, {"max_chars": len(ARTICLE) + 1},
                                          {"max_chars": 10 * len(ARTICLE)}, r"id 'long'.*raise --max-chars")
    keys = [(r["doc_id"], r["sentence_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8 * 3 + 9
    assert [k[0] for k in keys if k[1] == 0] == [r["id"] for r in records]
    clean = tmp_path / "clean.jsonl"
    score_corpus([tmp_path / "in.jsonl"], clean, tiny_model, progress=False, chunk_sentences=3,
                 max_chars=10 * len(ARTICLE))
    assert clean.read_bytes() == (tmp_path / "o.jsonl").read_bytes()


def test_scoring_rerun_with_on_error_skip_resumes_instead_of_starting_over(tmp_path, tiny_model):
    records = ([{"id": f"a{i}", "text": ARTICLE} for i in range(5)] + [{"id": "empty", "text": " "}]
               + [{"id": f"b{i}", "text": ARTICLE} for i in range(3)])
    summary, rows = _stopped_then_resumed(tmp_path, tiny_model, records, {}, {"on_error": "skip"},
                                          r"id 'empty'.*--on-error skip")
    keys = [(r["doc_id"], r["sentence_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8 * 3 and summary.skipped == 1
    assert [e["doc_id"] for e in read_jsonl(tmp_path / "o.jsonl.errors.jsonl")] == ["empty"]


def test_scoring_failed_overwrite_keeps_the_earlier_output_and_its_error_log(tmp_path, tiny_model, monkeypatch):
    """A log beside an output is that output's: the new run's log takes its final name only with its output."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": ARTICLE}, {"id": "empty", "text": " "}])
    out, log = tmp_path / "o.jsonl", tmp_path / "o.jsonl.errors.jsonl"
    score_corpus([source], out, tiny_model, progress=False, on_error="skip")
    earlier_output, earlier_log = out.read_bytes(), log.read_bytes()
    write_jsonl(source, [{"id": f"b{i}", "text": text} for i, text in enumerate([" ", ARTICLE, " ", ARTICLE] * 3)])
    interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=2)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], out, tiny_model, progress=False, on_error="skip", overwrite=True, chunk_sentences=3)
    assert out.read_bytes() == earlier_output and log.read_bytes() == earlier_log
    assert len((tmp_path / "o.jsonl.errors.jsonl.partial").read_text().splitlines()) >= 1, "kept for its resume"


def test_scoring_an_earlier_output_is_not_taken_for_an_interrupted_run_whose_partial_was_deleted(
        tmp_path, tiny_model, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": f"a{i}", "text": ARTICLE} for i in range(6)])
    out = tmp_path / "o.jsonl"
    score_corpus([source], out, tiny_model, progress=False)
    real = interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=2)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], out, tiny_model, progress=False, overwrite=True, chunk_sentences=3)
    monkeypatch.setattr(StanceModel, "proba_and_truncation", real)
    (tmp_path / "o.jsonl.partial").unlink()  # by hand: the earlier output is now the only one there
    with pytest.raises(ResumeError, match="partial output that is gone"):
        score_corpus([source], out, tiny_model, progress=False, chunk_sentences=3)


def test_scoring_killed_between_publishing_the_output_and_dropping_progress_finishes_cleanly(
        tmp_path, tiny_model, monkeypatch):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": ARTICLE}, {"id": "empty", "text": " "}])
    out = tmp_path / "o.jsonl"
    real = OutputPaths.publish_errors

    def killed_after(self, logged):
        real(self, logged)
        raise KeyboardInterrupt

    monkeypatch.setattr(OutputPaths, "publish_errors", killed_after)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], out, tiny_model, progress=False, on_error="skip")
    monkeypatch.setattr(OutputPaths, "publish_errors", real)
    assert (tmp_path / f"o.jsonl{PROGRESS_SUFFIX}").exists()
    summary = score_corpus([source], out, tiny_model, progress=False, on_error="skip")
    assert summary.skipped == 1 and not (tmp_path / f"o.jsonl{PROGRESS_SUFFIX}").exists()
    assert [e["doc_id"] for e in read_jsonl(tmp_path / "o.jsonl.errors.jsonl")] == ["empty"]
    assert not (tmp_path / "o.jsonl.errors.jsonl.partial").exists()


def test_scoring_resumes_a_run_of_an_earlier_stanceclf_with_its_error_log(tmp_path, tiny_model, monkeypatch):
    """Its progress file has no ``finishing`` and its log is under the final name: the log goes on."""
    records = [{"id": "empty", "text": " "}] + [{"id": f"a{i}", "text": ARTICLE} for i in range(4)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out, progress = tmp_path / "o.jsonl", tmp_path / f"o.jsonl{PROGRESS_SUFFIX}"
    interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=2)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], out, tiny_model, progress=False, on_error="skip", chunk_sentences=3)
    monkeypatch.undo()
    state = json.loads(progress.read_text())
    del state["finishing"]
    progress.write_text(json.dumps(state))
    (tmp_path / "o.jsonl.errors.jsonl.partial").replace(tmp_path / "o.jsonl.errors.jsonl")
    summary = score_corpus([source], out, tiny_model, progress=False, on_error="skip", chunk_sentences=3)
    assert summary.resumed_from > 0 and summary.skipped == 1
    assert [e["doc_id"] for e in read_jsonl(tmp_path / "o.jsonl.errors.jsonl")] == ["empty"]


# ---- a second run on the same output, while the first is going ------------------------------------------------


def test_scoring_second_process_on_the_same_output_is_refused_and_the_first_completes(tmp_path, tiny_model_dir):
    """The first run reads its input from a named pipe: it scores what it gets, commits, and waits for more
    while it holds the output, so the second run starts for certain while the first is going."""
    records = [{"id": f"doc{i:04d}", "text": f"Document {i} says NATO will grow. " + ARTICLE} for i in range(600)]
    lines = [json.dumps(record) + "\n" for record in records]
    fifo, out = tmp_path / "stream.jsonl", tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "stanceclf.cli", "score", str(fifo), "--out", str(out), "--model",
               str(tiny_model_dir), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress_file = tmp_path / f"out.jsonl{PROGRESS_SUFFIX}"
    with open(fifo, "w", encoding="utf-8") as feed:  # blocks until the first run opens its input
        feed.writelines(lines[:400])
        feed.flush()
        deadline = time.time() + 120
        while time.time() < deadline and not (progress_file.exists()
                                              and json.loads(progress_file.read_text())["records_done"] > 0):
            time.sleep(0.05)
        state_before = progress_file.read_bytes()
        assert first.poll() is None and json.loads(state_before)["records_done"] > 0
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert "[E031]" in second.stderr and "another stanceclf run is writing this output right now" in second.stderr
        assert "Traceback" not in second.stderr
        assert progress_file.read_bytes() == state_before, "the first run's resume state is untouched"
        assert (tmp_path / "out.jsonl.partial").exists() and not out.exists()
        feed.writelines(lines[400:])
    _, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors
    keys = [(r["doc_id"], r["sentence_index"]) for r in read_jsonl(out)]
    assert len(keys) == len(set(keys)) == 600 * 4
    assert [k[0] for k in keys[::4]] == [r["id"] for r in records]
    assert not progress_file.exists() and not (tmp_path / "out.jsonl.lock").exists()


def test_scoring_id_that_is_not_valid_unicode_is_a_bad_record(tmp_path, tiny_model):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a\\ud800", "text": "NATO will expand again."}\n{"id": "b", "text": "Fine."}\n',
                      encoding="utf-8")
    with pytest.raises(InputRecordError, match=r"id .*a\\\\ud800.*not valid Unicode"):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False)
    summary = score_corpus([source], tmp_path / "s.jsonl", tiny_model, progress=False, on_error="skip")
    assert summary.skipped == 1 and [r["doc_id"] for r in read_jsonl(tmp_path / "s.jsonl")] == ["b"]
    logged = read_jsonl(tmp_path / "s.jsonl.errors.jsonl")
    assert logged[0]["doc_id"] == "a\\ud800" and "not valid Unicode" in logged[0]["error"]


def test_scoring_lock_taken_on_a_lock_file_its_holder_just_removed_is_never_an_orphan(tmp_path):
    """A run that opened OUT.lock just before the previous run removed it must not hold the removed file
    (a third run would then lock a new file and write the same output): it holds the file at OUT.lock,
    or is refused."""
    import fcntl

    from stanceclf.infer.scoring.state import OutputPaths

    files = OutputPaths.beside(tmp_path / "o.jsonl")
    real_flock = fcntl.flock
    calls = []

    def flock_after_the_file_goes(fd, operation):
        if not calls and operation & fcntl.LOCK_EX:  # the previous run removes the file right before
            files.lock.unlink(missing_ok=True)
        calls.append(fd)
        return real_flock(fd, operation)

    fcntl.flock = flock_after_the_file_goes
    try:
        with files.locked():
            fcntl.flock = real_flock
            with pytest.raises(ScoringSetupError, match="another stanceclf run is writing this output"):
                with files.locked():  # another run, coming for the file at OUT.lock
                    pass
    except ScoringSetupError as refused:
        assert "another stanceclf run" in str(refused)
    finally:
        fcntl.flock = real_flock
    assert calls and not files.lock.exists()


def _interrupted(tmp_path, tiny_model, monkeypatch, records, **options):
    source = write_jsonl(tmp_path / "in.jsonl", records)
    real = interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=2)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False, chunk_sentences=3, **options)
    monkeypatch.setattr(StanceModel, "proba_and_truncation", real)
    return source


@pytest.mark.parametrize("change, message", [
    ({"chunk_sentences": 6}, r"--chunk-sentences was 3, now 6: rerun with the interrupted run's backend and options"),
    ({"per_document": True}, r"--per-document was False, now True"),
    ({"text_field": "body", "id_field": "id"}, r"--id-field was None, now 'id'; --text-field was 'text', now 'body'"),
])
def test_scoring_resume_with_other_options_is_refused_naming_them(tmp_path, tiny_model, monkeypatch, change, message):
    records = [{"id": str(i), "text": ARTICLE, "body": ARTICLE} for i in range(4)]
    _interrupted(tmp_path, tiny_model, monkeypatch, records)
    options = {"chunk_sentences": 3, **change}
    with pytest.raises(ResumeError, match=message) as refused:
        score_corpus([tmp_path / "in.jsonl"], tmp_path / "o.jsonl", tiny_model, progress=False, **options)
    assert str(refused.value).startswith("[E034] ") and "o.jsonl.progress.json" in str(refused.value)
    assert "--overwrite" in str(refused.value)
    score_corpus([tmp_path / "in.jsonl"], tmp_path / "o.jsonl", tiny_model, progress=False, overwrite=True, **options)


def test_scoring_resume_refused_when_an_input_was_replaced_by_a_copy_keeping_size_and_mtime(tmp_path, tiny_model,
                                                                                            monkeypatch):
    """``cp -p``, rsync or unzip keep size and mtime: the inode and ctime still tell the file changed."""
    records = [{"id": str(i), "text": ARTICLE} for i in range(4)]
    source = _interrupted(tmp_path, tiny_model, monkeypatch, records)
    before = source.stat()
    replacement = tmp_path / "replacement.jsonl"
    write_jsonl(replacement, [{"id": str(9 - i), "text": ARTICLE} for i in range(4)])
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, source)
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(ResumeError, match="the input files changed .*: the rows written so far cannot be continued"):
        score_corpus([source], tmp_path / "o.jsonl", tiny_model, progress=False, chunk_sentences=3)


def test_scoring_resume_refused_in_the_cli_with_its_code_and_what_changed(tmp_path, tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    from stanceclf.cli import app

    model = StanceModel.from_pretrained(tiny_model_dir)
    _interrupted(tmp_path, model, monkeypatch, [{"id": str(i), "text": ARTICLE} for i in range(4)],
                 per_document=True)
    result = CliRunner().invoke(app, ["score", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                                      "--model", str(tiny_model_dir), "--no-progress"])
    assert result.exit_code == 1
    assert "[E034]" in result.output and "--per-document was True, now False" in result.output


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_scoring_resume_refused_when_written_output_is_gone(tmp_path, tiny_model, monkeypatch, fmt):
    """Rows the progress file counts as written but that are no longer there (a part deleted, the partial file
    cut short) would be lost, or turned into zero bytes, by a resume: refused with E034."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "text": ARTICLE} for i in range(40)])
    out = tmp_path / f"o.{fmt}"
    real_predict = interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=3)
    with pytest.raises(KeyboardInterrupt):
        score_corpus([source], out, tiny_model, progress=False, chunk_sentences=30)
    monkeypatch.setattr(StanceModel, "proba_and_truncation", real_predict)
    partial = tmp_path / f"o.{fmt}.partial"
    if fmt == "parquet":
        (partial / "part-00000000.parquet").unlink()
    else:
        partial.write_bytes(partial.read_bytes()[:100])
    with pytest.raises(ResumeError, match="--overwrite"):
        score_corpus([source], out, tiny_model, progress=False, chunk_sentences=30)
    summary = score_corpus([source], out, tiny_model, progress=False, chunk_sentences=30, overwrite=True)
    assert summary.resumed_from == 0 and summary.sentences == 120
