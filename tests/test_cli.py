"""The command line verbs, run in process with typer's runner."""

from __future__ import annotations

import json

import pytest

from typer.testing import CliRunner

from stanceclf.cli import app
from stanceclf.data.dataset import BuildConfig, build_dataset, save_dataset
from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.data.schema import load_schema

runner = CliRunner()
TEXT = "NATO will expand again. Moscow warned of a dangerous escalation.\nThe summit opened on Monday."


def small_dataset(tmp_path):
    schema = load_schema("claim-types")
    docs = [AnnotatedDocument(f"d{i}", TEXT, [Span(0, 23, "prediction", "t"), Span(24, 64, "threat_framing", "t")],
                              ("t",)) for i in range(10)]
    dataset, info = build_dataset(docs, schema, BuildConfig(split_ratios={"train": 0.6, "dev": 0.2, "test": 0.2}))
    return save_dataset(dataset, info, schema, tmp_path / "data")


def test_cli_evaluate_writes_table_report_and_plots(tmp_path, tiny_model_dir):
    data = small_dataset(tmp_path)
    result = runner.invoke(app, ["evaluate", str(tiny_model_dir), str(data), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "| prediction |" in result.output and "macro" in result.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["labels"]["prediction"]["support"] == 2 and report["examples"] == 6
    assert (tmp_path / "ev" / "pr-prediction.png").stat().st_size > 1000
    assert (tmp_path / "ev" / "errors-per-label.png").exists()


def test_cli_evaluate_unknown_split_is_a_clear_error(tmp_path, tiny_model_dir):
    data = small_dataset(tmp_path)
    result = runner.invoke(app, ["evaluate", str(tiny_model_dir), str(data), "--split", "holdout"])
    assert result.exit_code == 1
    assert "no split 'holdout'" in result.output


def test_cli_evaluate_refuses_documents_the_model_was_trained_on(tmp_path, tiny_model_dir):
    import shutil

    data = small_dataset(tmp_path)
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    manifest = json.loads((model_dir / "stanceclf.json").read_text())
    manifest["training"] = {"documents": {"train": [f"d{i}" for i in range(10)], "dev": []}}
    (model_dir / "stanceclf.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["evaluate", str(model_dir), str(data), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 1
    assert "[E040]" in result.output and "training split" in result.output
    result = runner.invoke(app, ["evaluate", str(model_dir), str(data), "--out", str(tmp_path / "ev"),
                                 "--allow-training-documents"])
    assert result.exit_code == 0, result.output
    assert "2 document(s) of this split were in the model's training split" in result.output


def test_rows_never_seen_leaves_out_the_documents_of_the_models_train_and_dev_splits(tmp_path, tiny_model_dir):
    """What the benchmarks measure a shipped model on: a rebuilt split can hold articles it trained on."""
    import shutil

    from datasets import concatenate_datasets

    from stanceclf.data.dataset import load_built_dataset
    from stanceclf.errors import EvaluationError
    from stanceclf.train.evaluation import rows_never_seen

    data, _ = load_built_dataset(small_dataset(tmp_path))
    every_row = concatenate_datasets([data[split] for split in data])
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    manifest = json.loads((model_dir / "stanceclf.json").read_text())
    manifest["training"] = {"documents": {"train": ["d0", "d1", "d2", "d3"], "dev": ["d4"], "test": ["d5", "d6"]}}
    (model_dir / "stanceclf.json").write_text(json.dumps(manifest))
    unseen = rows_never_seen(model_dir, every_row)
    assert sorted(set(unseen["doc_id"])) == ["d5", "d6", "d7", "d8", "d9"]
    assert len(unseen) == 5 * 3  # every sentence of those documents, none of the others
    manifest["training"] = {"documents": {"train": [f"d{i}" for i in range(8)]}}  # an older manifest: no dev list
    (model_dir / "stanceclf.json").write_text(json.dumps(manifest))
    assert sorted(set(rows_never_seen(model_dir, every_row)["doc_id"])) == ["d8", "d9"]
    manifest["training"] = {"documents": {"train": [f"d{i}" for i in range(9)], "dev": ["d9"]}}
    (model_dir / "stanceclf.json").write_text(json.dumps(manifest))
    with pytest.raises(EvaluationError, match=r"\[E040\].*every one of the split's 10 documents"):
        rows_never_seen(model_dir, every_row)
    manifest["training"] = {}
    (model_dir / "stanceclf.json").write_text(json.dumps(manifest))
    with pytest.raises(EvaluationError, match=r"\[E040\].*does not list the documents it trained on"):
        rows_never_seen(model_dir, every_row)


def test_cli_export_gives_a_pipeline_loadable_directory(tmp_path, tiny_arch_model_dir):
    from transformers import pipeline

    result = runner.invoke(app, ["export", str(tiny_arch_model_dir), str(tmp_path / "plain")])
    assert result.exit_code == 0, result.output
    classifier = pipeline("text-classification", model=str(tmp_path / "plain"), top_k=None)
    out = classifier(["War is coming."])
    assert {item["label"] for item in out[0]} == {"prediction", "threat_framing", "policy_attribution"}


def test_cli_classify_prints_json_per_sentence(tmp_path, tiny_model_dir):
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT, encoding="utf-8")
    result = runner.invoke(app, ["classify", str(doc), "--model", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["text"] for r in rows] == ["NATO will expand again.", "Moscow warned of a dangerous escalation.",
                                         "The summit opened on Monday."]
    assert rows[2]["start"] == TEXT.index("The summit")


def test_cli_classify_offsets_of_crlf_file_point_into_the_file(tmp_path, tiny_model_dir):
    raw = "First line here.\r\nSecond sentence here.\r\n"
    doc = tmp_path / "crlf.txt"
    doc.write_bytes(raw.encode("utf-8"))
    result = runner.invoke(app, ["classify", str(doc), "--model", str(tiny_model_dir), "--json", "--all"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [raw[r["start"]:r["end"]] for r in rows] == ["First line here.", "Second sentence here."]
    assert rows[1]["start"] == 18


def test_cli_classify_unreadable_files_name_the_file(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["classify", str(tmp_path / "nope.txt"), "--model", str(tiny_model_dir)])
    assert result.exit_code == 1 and "[E006]" in result.output and "nope.txt" in result.output
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait.")
    result = runner.invoke(app, ["classify", str(tmp_path / "latin1.txt"), "--model", str(tiny_model_dir)])
    assert result.exit_code == 1 and "latin1.txt" in result.output and "not valid UTF-8" in result.output


def test_cli_classify_backends(tmp_path, tiny_model_dir):
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT, encoding="utf-8")
    plain = runner.invoke(app, ["classify", str(doc), "--model", str(tiny_model_dir), "--json"])
    bf16 = runner.invoke(app, ["classify", str(doc), "--model", str(tiny_model_dir), "--json", "--backend", "bf16"])
    assert plain.exit_code == 0 and bf16.exit_code == 0, bf16.output
    for a, b in zip(plain.output.splitlines(), bf16.output.splitlines()):
        a, b = json.loads(a), json.loads(b)
        assert a["text"] == b["text"]
        assert max(abs(a[k] - b[k]) for k in a if k.startswith("score_")) <= 0.02
    result = runner.invoke(app, ["classify", str(doc), "--model", str(tiny_model_dir), "--backend", "int4"])
    assert result.exit_code == 1 and "[E022]" in result.output and "'int4'" in result.output


def test_cli_info_and_missing_model_error(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["info", str(tiny_model_dir)])
    assert result.exit_code == 0 and "threshold 0.500" in result.output
    result = runner.invoke(app, ["info", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "[E020]" in result.output


def test_cli_score_reports_bad_record_and_exit_code(tmp_path, tiny_model_dir):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "text": TEXT}) + "\n" + json.dumps({"id": "b", "text": " "}) + "\n")
    result = runner.invoke(app, ["score", str(source), "--out", str(tmp_path / "o.jsonl"), "--model",
                                 str(tiny_model_dir), "--no-progress"])
    assert result.exit_code == 1
    assert "[E030]" in result.output and "id 'b'" in result.output and "--on-error skip" in result.output
    result = runner.invoke(app, ["score", str(source), "--out", str(tmp_path / "o.jsonl"), "--model",
                                 str(tiny_model_dir), "--no-progress", "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad records" in result.output
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3


def test_cli_train_bad_recipe_exits_with_named_field(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "x"\nschema = "claim-types"\noutput_dir = "m"\n[data]\ninputs = ["a.jsonl"]\n'
                      '[training]\nepochs = -1\n')
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 1
    assert "[E010]" in result.output and "training.epochs" in result.output


LONG_SENTENCE = ("The alliance will deploy " + "several more battalions along the eastern border " * 4
                 + "before the summit opens.")


def test_cli_classify_writes_plain_tab_separated_text_when_not_a_terminal(tmp_path, make_tiny_model):
    model_dir = make_tiny_model(thresholds={"prediction": 0.0, "threat_framing": 0.0, "policy_attribution": 2.0}
                                ).save_pretrained(tmp_path / "m")
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT + "\n" + LONG_SENTENCE, encoding="utf-8")
    result = runner.invoke(app, ["classify", str(doc), "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output
    lines = result.output.splitlines()
    assert lines[0] == "# thresholds: prediction=0.0 threat_framing=0.0 policy_attribution=2.0"
    header, rows = lines[1].split("\t"), [line.split("\t") for line in lines[2:]]
    assert header == ["file", "sentence", "labels", "prediction", "threat_framing", "policy_attribution", "text"]
    assert len(rows) == 4 and all(len(row) == len(header) for row in rows)
    assert {row[2] for row in rows} == {"prediction,threat_framing"}
    assert all(0.0 <= float(score) <= 1.0 for row in rows for score in row[3:6])
    assert rows[-1][-1] == LONG_SENTENCE, "the whole text, not cut at 110 characters"


def test_cli_classify_table_on_a_terminal_marks_labels_and_shows_thresholds():
    import io
    import re

    from rich.console import Console

    from stanceclf.cli.render import MAX_TEXT_CHARS, PASS_MARK, render_classified
    from stanceclf.infer.results import Prediction

    labels = ["prediction", "threat_framing", "policy_attribution"]
    thresholds = {"prediction": 0.5, "threat_framing": 0.64, "policy_attribution": 0.39}
    long_text = "word " * 200
    predictions = [
        Prediction("All three.", 0, 10, labels, {"prediction": 0.9, "threat_framing": 0.8, "policy_attribution": 0.7}),
        Prediction("None.", 11, 16, [], {"prediction": 0.1, "threat_framing": 0.2, "policy_attribution": 0.3}),
        Prediction(long_text, 17, 17 + len(long_text), ["policy_attribution"],
                   {"prediction": 0.2, "threat_framing": 0.639, "policy_attribution": 0.39})]
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=130, color_system=None)
    render_classified(console, [("doc.txt", predictions)], labels, thresholds)
    out = buffer.getvalue()
    for label in labels:
        assert label in out, "full label names, not 'predic='"
    assert "≥ 0.500" in out and "≥ 0.640" in out and "≥ 0.390" in out
    assert out.count(PASS_MARK) == 4 + 1  # three labels, one label, and the legend
    assert "None." not in out, "sentences without labels are left out unless --all"
    assert "…" in out and "word " * (MAX_TEXT_CHARS // 5) not in out
    # Scores line up: each label's scores end in the same column on every row.
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s+0\.\d{3}", line)]
    ends = [[m.end() for m in re.finditer(r"0\.\d{3}", row)] for row in rows]
    assert len(rows) == 2 and ends[0] == ends[1]


def test_cli_build_dataset_and_export_print_no_library_progress_bars(tmp_path, tiny_model_dir):
    from pathlib import Path

    import datasets.utils

    fixture = Path(__file__).parent / "fixtures" / "annotations" / "native" / "docs.jsonl"
    built = runner.invoke(app, ["build-dataset", str(fixture), "--out", str(tmp_path / "data"),
                                "--export", "jsonl,parquet"])
    exported = runner.invoke(app, ["export", str(tiny_model_dir), str(tmp_path / "plain")])
    assert built.exit_code == 0 and exported.exit_code == 0, built.output + exported.output
    for output in (built.output, exported.output):
        assert "%|" not in output and "it/s" not in output and "examples/s" not in output, output
    assert "Writing model shards" not in exported.output and "Saving the dataset" not in built.output
    assert not datasets.utils.are_progress_bars_disabled(), "the library's own setting is restored afterwards"


def test_cli_build_dataset_from_a_recipe_reproduces_the_training_split(tmp_path):
    """build-dataset --recipe builds exactly the dataset the trainer builds from the same recipe."""
    from stanceclf.data.dataset import load_built_dataset
    from stanceclf.data.readers import write_native
    from stanceclf.train.recipe import load_recipe
    from stanceclf.train.phases import prepare_dataset

    docs = [AnnotatedDocument(f"d{i}", TEXT, [Span(0, 23, "prediction", "t")] if i % 2 else [], ("t",))
            for i in range(12)]
    write_native(docs, tmp_path / "a.jsonl")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\nschema = "claim-types"\noutput_dir = "m"\nseed = 5\n[data]\ninputs = ["a.jsonl"]\n')
    result = runner.invoke(app, ["build-dataset", "--recipe", str(recipe), "--out", str(tmp_path / "built")])
    assert result.exit_code == 0, result.output
    _, built = load_built_dataset(tmp_path / "built")
    loaded = load_recipe(recipe)
    _, trained, _ = prepare_dataset(loaded, load_schema("claim-types"))
    assert built["fingerprint"] == trained["fingerprint"] and built["documents"] == trained["documents"]
    # The plain command with the same seed and default settings gives the same split too.
    plain = runner.invoke(app, ["build-dataset", str(tmp_path / "a.jsonl"), "--seed", "5", "--out",
                                str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    assert load_built_dataset(tmp_path / "plain")[1]["documents"] == trained["documents"]


def test_cli_build_dataset_passes_reader_options(tmp_path):
    source = tmp_path / "d.jsonl"
    source.write_text(json.dumps({"id": 1, "body": TEXT, "label": [[0, 23, "prediction"]]}) + "\n")
    result = runner.invoke(app, ["build-dataset", str(source), "--format", "doccano", "--reader-option",
                                 "text_field=body", "--split", "train=1.0", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    bad = runner.invoke(app, ["build-dataset", str(source), "--format", "doccano", "--reader-option", "colour=red",
                              "--out", str(tmp_path / "c")])
    assert bad.exit_code == 1 and "no option 'colour'" in bad.output


def test_cli_evaluate_checks_labels_in_the_library(tmp_path, tiny_model_dir):
    """A library caller gets the same label-order check as the CLI."""
    from stanceclf.errors import EvaluationError
    from stanceclf.infer.model import StanceModel
    from stanceclf.train.evaluation import evaluate_on_dataset

    schema = load_schema("ptc-propaganda")
    docs = [AnnotatedDocument(f"d{i}", TEXT, [], ("t",)) for i in range(4)]
    dataset, info = build_dataset(docs, schema, BuildConfig(split_ratios={"train": 0.5, "test": 0.5}))
    folder = save_dataset(dataset, info, schema, tmp_path / "data")
    with pytest.raises(EvaluationError, match="labels"):
        evaluate_on_dataset(StanceModel.from_pretrained(tiny_model_dir), folder, out=tmp_path / "ev")


def test_cli_evaluate_writes_to_the_working_directory_by_default(tmp_path, tiny_model_dir, monkeypatch):
    data = small_dataset(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["evaluate", str(tiny_model_dir), str(data)])
    assert result.exit_code == 0, result.output
    assert (work / "eval-tiny-model-test" / "report.json").exists()
    assert not list(tiny_model_dir.glob("eval-*"))


def test_cli_evaluate_leaves_labels_without_positives_out_of_the_macro_average(tmp_path, tiny_model_dir):
    data = small_dataset(tmp_path)  # no policy_attribution spans at all
    result = runner.invoke(app, ["evaluate", str(tiny_model_dir), str(data), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    row = report["labels"]["policy_attribution"]
    assert row["support"] == 0 and row["f1"] is None and row["recall"] is None
    assert report["macro_left_out"] == ["policy_attribution"]
    others = [report["labels"][label]["f1"] for label in ("prediction", "threat_framing")]
    assert report["macro"]["f1"] == sum(others) / 2
    assert "| policy_attribution | " in result.output and "No positives in this split for policy_attribution" \
        in result.output
    assert "No positives in this split for policy_attribution" in (tmp_path / "ev" / "report.md").read_text()


def test_cli_score_runs_that_score_nothing_or_repeat_ids_exit_non_zero(tmp_path, tiny_model_dir):
    def score(*args):
        return runner.invoke(app, ["score", *map(str, args), "--model", str(tiny_model_dir), "--no-progress"])

    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "A.TXT").write_text(TEXT, encoding="utf-8")
    (upper / "b.text").write_text(TEXT, encoding="utf-8")
    result = score(upper, "--out", tmp_path / "a.jsonl")
    assert result.exit_code == 0 and "scored 2 documents, 6 sentences" in result.output, result.output
    (tmp_path / "w.csv").write_text("id,body\n1,NATO will expand.\n2,Moscow warned.\n", encoding="utf-8")
    result = score(tmp_path / "w.csv", "--out", tmp_path / "b.jsonl", "--on-error", "skip")
    assert result.exit_code == 1 and "[E030]" in result.output and "nothing was scored" in result.output
    assert not (tmp_path / "b.jsonl").exists()
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "x", "text": TEXT}) + "\n"
                                      + json.dumps({"id": "x", "text": "Other."}) + "\n", encoding="utf-8")
    result = score(tmp_path / "d.jsonl", "--out", tmp_path / "c.jsonl")
    assert result.exit_code == 1 and "duplicate document id 'x'" in result.output


def test_cli_score_following_the_max_chars_advice_resumes(tmp_path, tiny_model_dir):
    records = [{"id": f"d{i}", "text": TEXT} for i in range(3)] + [{"id": "long", "text": TEXT * 4}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    command = ["score", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl"), "--model",
               str(tiny_model_dir), "--no-progress"]
    result = runner.invoke(app, [*command, "--max-chars", str(len(TEXT))])
    assert result.exit_code == 1 and "raise --max-chars" in result.output
    result = runner.invoke(app, [*command, "--max-chars", str(10 * len(TEXT))])
    assert result.exit_code == 0, result.output
    assert "resuming after 3 records" in result.output and "scored 4 documents" in result.output


def test_cli_classify_long_input_on_a_terminal_shows_progress_and_the_same_results(tmp_path, tiny_model_dir):
    import io

    from rich.console import Console

    from stanceclf.cli.infer_verbs import LONG_INPUT_CHARS, _classify_with_progress
    from stanceclf.infer.model import StanceModel
    from stanceclf.progress import wants_progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert wants_progress(LONG_INPUT_CHARS, long_work=LONG_INPUT_CHARS, stream=Terminal())
    assert not wants_progress(LONG_INPUT_CHARS - 1, long_work=LONG_INPUT_CHARS, stream=Terminal())
    assert not wants_progress(LONG_INPUT_CHARS, long_work=LONG_INPUT_CHARS, stream=io.StringIO())
    model = StanceModel.from_pretrained(tiny_model_dir)
    texts = [TEXT, "One more document. It is short."]
    screen = io.StringIO()
    shown = _classify_with_progress(model, texts, Console(file=screen, force_terminal=True, width=80))
    assert "classifying" in screen.getvalue()
    assert [[(p.start, p.labels, p.scores) for p in doc] for doc in shown] == \
        [[(p.start, p.labels, p.scores) for p in doc] for doc in model.classify(texts)]


def test_cli_score_draws_no_progress_bar_into_a_log(tmp_path, tiny_model_dir):
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": TEXT}) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["score", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                                 "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "sent/s" not in result.output and "\r" not in result.output, result.output


def test_cli_score_into_a_log_writes_plain_progress_lines(tmp_path, tiny_model_dir, monkeypatch):
    from stanceclf import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)  # a line at every chunk, not a line a minute
    records = [json.dumps({"id": f"d{i}", "text": TEXT}) for i in range(3)]
    (tmp_path / "in.jsonl").write_text("\n".join(records) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["score", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                                 "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("scoring: ")]
    assert lines and "\r" not in result.output, result.output
    written = sum(1 for _ in open(tmp_path / "o.jsonl", encoding="utf-8"))
    assert lines[-1].startswith(f"scoring: {written} sent [") and "docs=3" in lines[-1], lines[-1]


def test_cli_verbs_take_a_shipped_model_by_name(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    from stanceclf.infer import predict

    root = tmp_path / "shipped"
    shutil.copytree(tiny_model_dir, root / "claim-types-student")
    monkeypatch.setattr(predict, "_SHIPPED_MODEL_ROOTS", (root,))
    monkeypatch.chdir(tmp_path)
    info = runner.invoke(app, ["info", "claim-types-student"])
    assert info.exit_code == 0, info.output
    assert str(root / "claim-types-student") in info.output
    exported = runner.invoke(app, ["export", "claim-types-student", str(tmp_path / "plain")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "plain" / "model.safetensors").is_file()
    unknown = runner.invoke(app, ["info", "claim-types-large"])
    assert unknown.exit_code == 1 and "neither a model directory nor a shipped model" in unknown.output
