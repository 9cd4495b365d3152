"""Active learning: picking documents to annotate and writing them as pre-annotated Label Studio tasks."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stanceclf.cli import app
from stanceclf.data.label_studio_config import LABELS_CONTROL, TEXT_OBJECT, labelling_config
from stanceclf.data.readers import ReadReport, read_annotations
from stanceclf.data.schema import load_schema
from stanceclf.errors import InputRecordError, ScoringSetupError
from stanceclf.infer.suggest import (annotated_ids, label_studio_task, model_version, sentence_disagreement,
                                     sentence_uncertainty, suggest, write_tasks)

runner = CliRunner()
TEXTS = {
    f"doc{i}": text for i, text in enumerate([
        "Prices will rise next year. The minister blamed the bank.\n",
        "Wow \U0001F600\U0001F680 NATO warned of a dangerous escalation. Moscow plans to expand its fleet.\n",
        "The summit ended early.\nBoth sides said talks would resume in spring. Nobody expects a deal.\n",
        "A short note.\n",
        "Analysts fear a trade war could hurt exports. The central bank may cut rates. Markets fell.\n",
        "The ministry announced a new policy to curb inflation.\n",
    ])
}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": doc_id, "body": text}) + "\n" for doc_id, text in TEXTS.items()),
                    encoding="utf-8")
    return path


def test_suggest_sentence_uncertainty_is_one_at_the_threshold_and_zero_at_the_ends():
    thresholds = np.array([0.2, 0.5])
    scores = np.array([[0.2, 0.0], [0.1, 1.0], [0.0, 0.75], [0.6, 0.5], [0.0, 1.0]])
    # Relative margins: row 1 (0.2 - 0.1) / 0.2 = 0.5; row 2 (0.75 - 0.5) / 0.5 = 0.5; row 3 (0.6-0.2)/0.8 = 0.5.
    assert sentence_uncertainty(scores, thresholds) == pytest.approx([1.0, 0.5, 0.5, 1.0, 0.0])
    # Thresholds of 0 and above 1 (a label switched off) give no division by zero.
    edge = sentence_uncertainty(np.array([[1.0, 1.0], [0.0, 0.0]]), np.array([1.0, 1.5]))
    assert np.isfinite(edge).all() and edge == pytest.approx([2 / 3, 0.0])


def test_suggest_sentence_disagreement_is_the_share_of_passes_flipping_a_label():
    decision = np.array([[True, False], [False, False]])
    passes = [np.array([[True, True], [False, False]]), np.array([[False, True], [False, False]]),
              np.array([[True, False], [False, False]]), np.array([[True, False], [False, False]])]
    assert sentence_disagreement(decision, passes) == pytest.approx([0.5, 0.0])


def test_suggest_uncertainty_keeps_the_most_uncertain_documents_across_chunks(corpus, make_tiny_model):
    model = make_tiny_model(thresholds={"prediction": 0.5, "threat_framing": 0.45, "policy_attribution": 0.55})
    summary = suggest([corpus], model, n=3, text_field="body", chunk_sentences=2, progress=False)
    # The same priorities computed document by document, from the scores every output reports.
    expected = {}
    for doc_id, text in TEXTS.items():
        scores = np.array([[p.scores[label] for label in model.labels] for p in model.classify(text)])
        expected[doc_id] = float(sentence_uncertainty(scores, model.threshold_vector).mean())
    ranked = sorted(expected, key=lambda d: -expected[d])[:3]
    assert [s.doc_id for s in summary.suggestions] == ranked
    assert [s.priority for s in summary.suggestions] == pytest.approx([expected[d] for d in ranked])
    assert summary.documents == len(TEXTS)
    for suggestion in summary.suggestions:
        assert [p.text for p in suggestion.predictions] == [p.text for p in model.classify(TEXTS[suggestion.doc_id])]


def test_suggest_random_is_seeded_and_predicts_what_it_picks(corpus, make_tiny_model):
    model = make_tiny_model()
    picks = [[s.doc_id for s in suggest([corpus], model, strategy="random", n=3, seed=seed, text_field="body",
                                        progress=False).suggestions] for seed in (1, 1, 2)]
    assert picks[0] == picks[1] and len(set(picks[0])) == 3
    assert picks[0] != picks[2]
    everything = suggest([corpus], model, strategy="random", n=100, seed=1, text_field="body", progress=False)
    assert sorted(s.doc_id for s in everything.suggestions) == sorted(TEXTS)
    assert all(s.predictions and s.predictions[0].start == 0 for s in everything.suggestions)


def test_suggest_flagged_ranks_documents_by_their_share_of_labelled_sentences(corpus, make_tiny_model):
    model = make_tiny_model(seed=4, thresholds={"prediction": 0.5, "threat_framing": 0.5, "policy_attribution": 0.5})
    summary = suggest([corpus], model, strategy="flagged", n=len(TEXTS), text_field="body", chunk_sentences=2,
                      progress=False)
    expected = {doc_id: float(np.mean([bool(p.labels) for p in model.classify(text)]))
                for doc_id, text in TEXTS.items()}
    assert {s.doc_id: s.priority for s in summary.suggestions} == pytest.approx(expected)
    assert [s.priority for s in summary.suggestions] == sorted(expected.values(), reverse=True)


def test_suggest_blind_tasks_show_no_model_labels(corpus, tmp_path, tiny_model_dir):
    out = tmp_path / "blind.json"
    result = runner.invoke(app, ["suggest", str(corpus), "--model", str(tiny_model_dir), "--text-field", "body",
                                 "--no-progress", "--out", str(out), "--n", "3", "--strategy", "flagged", "--blind"])
    assert result.exit_code == 0, result.output
    tasks = json.loads(out.read_text())
    assert len(tasks) == 3 and all("predictions" not in task for task in tasks)
    assert all(set(task["meta"]) == {"strategy", "source"} and task["meta"]["strategy"] == "flagged" for task in tasks)
    assert {task["data"]["doc_id"] for task in tasks} <= set(TEXTS)


def test_suggest_disagreement_works_on_a_model_loaded_from_its_directory(corpus, tiny_model_dir):
    """A directory's BERT runs in plain torch (no dropout layers); the committee uses its transformers twin."""
    from stanceclf.infer.model import StanceModel

    model = StanceModel.from_pretrained(tiny_model_dir)
    summary = suggest([corpus], model, strategy="disagreement", n=3, passes=3, seed=1, text_field="body",
                      progress=False)
    assert len(summary.suggestions) == 3 and max(s.priority for s in summary.suggestions) > 0


def test_suggest_disagreement_uses_dropout_on_a_copy_reproducibly(corpus, make_tiny_model):
    model = make_tiny_model()
    run = [suggest([corpus], model, strategy="disagreement", n=6, passes=4, seed=3, text_field="body",
                   progress=False) for _ in range(2)]
    priorities = [[(s.doc_id, s.priority) for s in r.suggestions] for r in run]
    assert priorities[0] == priorities[1]
    assert all(0.0 <= p <= 1.0 for _, p in priorities[0]) and max(p for _, p in priorities[0]) > 0
    assert not model.model.training  # the loaded model is left as it was
    for module in model.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    with pytest.raises(ScoringSetupError, match="no dropout"):
        suggest([corpus], model, strategy="disagreement", text_field="body", progress=False)


def test_suggest_bad_records_stop_or_are_skipped_and_excluded_ids_passed_over(tmp_path, make_tiny_model):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "Prices will rise."}) + "\n" + json.dumps({"id": "b", "text": ""})
                    + "\n" + json.dumps({"id": "c", "text": "Rates may fall."}) + "\n", encoding="utf-8")
    model = make_tiny_model()
    with pytest.raises(InputRecordError, match="record 1 .*id 'b'.*empty"):
        suggest([path], model, progress=False)
    summary = suggest([path], model, on_error="skip", exclude={"a"}, progress=False, log=lambda message: None)
    assert ([s.doc_id for s in summary.suggestions], summary.skipped, summary.excluded) == (["c"], 1, 1)
    with pytest.raises(InputRecordError, match="every record was excluded \\(2\\) or bad \\(1\\)"):
        suggest([path], model, on_error="skip", exclude={"a", "c"}, progress=False, log=lambda message: None)


def test_suggest_min_chars_and_a_seeded_sample_decide_what_is_scored(corpus, tmp_path, make_tiny_model):
    import random

    model = make_tiny_model(thresholds={"prediction": 0.5, "threat_framing": 0.45, "policy_attribution": 0.55})
    numbers = {doc_id: number for number, doc_id in enumerate(TEXTS)}
    short = [doc_id for doc_id, text in TEXTS.items() if len(text) < 20]
    assert short == ["doc3"]
    eligible = [numbers[d] for d in TEXTS if d not in short and d != "doc0"]  # doc0 excluded as annotated
    for seed in (5, 6):
        summary = suggest([corpus], model, n=2, sample=3, seed=seed, min_chars=20, exclude={"doc0"},
                          text_field="body", chunk_sentences=2, progress=False)
        sampled = set(random.Random(f"sample:{seed}").sample(eligible, 3))
        assert (summary.documents, summary.excluded, summary.short, summary.unsampled) == (3, 1, 1, 1)
        # The picks are the sample's most uncertain: the same as a run over the sampled documents alone.
        alone = tmp_path / f"sample{seed}.jsonl"
        alone.write_text("".join(json.dumps({"id": d, "body": t}) + "\n" for d, t in TEXTS.items()
                                 if numbers[d] in sampled), encoding="utf-8")
        expected = suggest([alone], model, n=2, text_field="body", progress=False)
        assert [(s.doc_id, s.priority) for s in summary.suggestions] == [
            (s.doc_id, s.priority) for s in expected.suggestions]
    everything = suggest([corpus], model, strategy="random", n=6, sample=100, min_chars=20, text_field="body",
                         progress=False)
    assert sorted(s.doc_id for s in everything.suggestions) == sorted(set(TEXTS) - {"doc3"})
    with pytest.raises(ScoringSetupError, match="--sample must be at least --n \\(3\\), got 2"):
        suggest([corpus], model, n=3, sample=2, text_field="body", progress=False)
    with pytest.raises(InputRecordError, match="shorter than --min-chars \\(6\\)"):
        suggest([corpus], model, min_chars=10_000, text_field="body", progress=False)


def test_suggest_resumes_a_sampled_run_with_the_same_sample(corpus, tmp_path, make_tiny_model, monkeypatch):
    from conftest import interrupt_on_call
    from stanceclf.errors import ResumeError
    from stanceclf.infer.suggest import _SuggestRun

    model = make_tiny_model(thresholds={"prediction": 0.5, "threat_framing": 0.45, "policy_attribution": 0.55})
    common = dict(n=3, sample=4, seed=3, min_chars=20, text_field="body", chunk_sentences=2, progress=False,
                  log=lambda message: None)
    clean = tmp_path / "clean.json"
    suggest([corpus], model, out=clean, **common)
    out = tmp_path / "tasks.json"
    real = interrupt_on_call(monkeypatch, _SuggestRun, "process_chunk", after=2)
    with pytest.raises(KeyboardInterrupt):
        suggest([corpus], model, out=out, **common)
    monkeypatch.setattr(_SuggestRun, "process_chunk", real)
    with pytest.raises(ResumeError, match=r"--sample was 4, now 5"):
        suggest([corpus], model, out=out, **{**common, "sample": 5})
    with pytest.raises(ResumeError, match=r"--max-chars was 1000000, now 60"):  # it decides what can be sampled
        suggest([corpus], model, out=out, **{**common, "max_chars": 60})
    summary = suggest([corpus], model, out=out, **common)
    assert summary.resumed_from > 0 and (summary.documents, summary.short, summary.unsampled) == (4, 1, 1)
    assert out.read_bytes() == clean.read_bytes()


def test_suggest_tasks_carry_pre_annotations_that_read_back_unchanged(corpus, tmp_path, make_tiny_model):
    model = make_tiny_model(thresholds={"prediction": 0.0, "threat_framing": 0.5, "policy_attribution": 2.0})
    summary = suggest([corpus], model, n=6, text_field="body", progress=False)
    out = write_tasks(summary, model, tmp_path / "tasks.json", strategy="uncertainty")
    tasks = json.loads(out.read_text(encoding="utf-8"))
    emoji = next(t for t in tasks if t["data"]["doc_id"] == "doc1")
    assert emoji["data"]["text"] == TEXTS["doc1"]
    prediction = emoji["predictions"][0]
    assert prediction["model_version"] == model_version(model) and 0 <= prediction["score"] <= 1
    sentences = model.classify(TEXTS["doc1"])
    expected = [(p.start, p.end, label) for p in sentences for label in p.labels]
    results = prediction["result"]
    assert [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in results] == expected
    assert {(r["from_name"], r["to_name"], r["type"]) for r in results} == {(LABELS_CONTROL, TEXT_OBJECT, "labels")}
    # Code-point offsets: the sentence after two emoji starts where Python says (UTF-16 would add 2).
    second = next(r for r in results if r["value"]["text"].startswith("Moscow"))
    assert second["value"]["start"] == TEXTS["doc1"].index("Moscow")
    assert second["score"] == sentences[1].scores[second["value"]["labels"][0]]
    # Accepting every pre-annotation as it is gives the same spans back through the reader, unrepaired.
    export = [{"id": i, "data": t["data"], "annotations": [{"completed_by": 1, "result": t["predictions"][0]["result"]}]}
              for i, t in enumerate(tasks)]
    (tmp_path / "export.json").write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    report = ReadReport()
    documents = {d.doc_id: d for d in read_annotations("label-studio", tmp_path / "export.json", report=report)}
    assert [(s.start, s.end, s.label) for s in documents["doc1"].spans] == sorted(expected)
    assert not report.repaired and set(documents) == set(TEXTS)
    with pytest.raises(Exception, match="exists"):
        write_tasks(summary, model, out, strategy="uncertainty")


def test_suggest_model_version_tells_weights_apart(tmp_path, make_tiny_model):
    first = make_tiny_model(seed=0)
    second = make_tiny_model(seed=1)
    # Unsaved, a model is known by its manifest, creation time included (it keeps two processes' unsaved models
    # apart, e.g. on resuming a run): made in the same second, the two are alike.
    second.manifest.created = first.manifest.created
    assert model_version(first) == model_version(second)  # unsaved: the manifest, alike
    first.save_pretrained(tmp_path / "a")
    second.save_pretrained(tmp_path / "b")
    versions = model_version(first), model_version(second)
    assert versions[0] != versions[1] and all(v.startswith("claim-types-1.1 tiny-random-bert ") for v in versions)


def test_suggest_annotated_ids_from_tasks_and_exports(tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"data": {"text": "x", "doc_id": "a"}}, {"data": {"text": "y", "doc_id": 7}}]))
    minimal = tmp_path / "min.json"
    minimal.write_text(json.dumps([{"text": "z", "doc_id": "c", "id": 1, "annotator": 1, "annotation_id": 1}]))
    assert annotated_ids([tasks, minimal]) == {"a", "7", "c"}
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"data": {"text": "x"}}]))
    with pytest.raises(ScoringSetupError, match="no task here carries data.doc_id"):
        annotated_ids([other])
    # The project's own stand-off annotations: a document's id, and the corpus record it is stored by.
    standoff = tmp_path / "batch.jsonl"
    standoff.write_text(json.dumps({"doc_id": "d1", "path": "x.txt", "spans": [], "note": "a\u2028b"},
                                   ensure_ascii=False) + "\n\n"
                        + json.dumps({"doc_id": "d2", "path": "pool.jsonl", "record": "r2", "spans": []}) + "\n")
    assert annotated_ids([standoff, tasks]) == {"d1", "d2", "r2", "a", "7"}
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"doc_id": "d1"}) + "\n" + json.dumps({"path": "x.txt"}) + "\n")
    with pytest.raises(ScoringSetupError, match="no doc_id") as raised:
        annotated_ids([broken])
    assert raised.value.where == f"{broken}:2"  # the file and its line


def test_suggest_cli_writes_tasks_and_excludes_an_earlier_round(corpus, tmp_path, tiny_model_dir):
    first, second = tmp_path / "round1.json", tmp_path / "round2.json"
    common = [str(corpus), "--model", str(tiny_model_dir), "--text-field", "body", "--no-progress"]
    result = runner.invoke(app, ["suggest", *common, "--out", str(first), "--n", "4"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 tasks" in result.output
    result = runner.invoke(app, ["suggest", *common, "--out", str(second), "--exclude", str(first)])
    assert result.exit_code == 0, result.output
    ids = [{t["data"]["doc_id"] for t in json.loads(p.read_text())} for p in (first, second)]
    assert len(ids[0]) == 4 and ids[1] == set(TEXTS) - ids[0]
    result = runner.invoke(app, ["suggest", *common, "--out", str(second)])
    assert result.exit_code == 1 and "--overwrite" in result.output
    standoff = tmp_path / "annotated.jsonl"  # what 'sheets import --corpus' writes: the corpus id as record
    standoff.write_text(json.dumps({"doc_id": "doc1", "path": "corpus.jsonl", "record": "doc1", "spans": []}) + "\n")
    third = tmp_path / "round3.json"
    result = runner.invoke(app, ["suggest", *common, "--out", str(third), "--exclude", str(standoff), "--n", "2",
                                 "--sample", "3", "--min-chars", "20", "--strategy", "random"])
    assert result.exit_code == 0, result.output
    assert "read 3 documents (excluded 1, 1 shorter than --min-chars, 1 outside the sample" in result.output
    assert {t["data"]["doc_id"] for t in json.loads(third.read_text())} <= set(TEXTS) - {"doc1", "doc3"}
    result = runner.invoke(app, ["suggest", *common, "--out", str(second), "--strategy", "loudest", "--overwrite"])
    assert result.exit_code == 1 and "unknown strategy 'loudest'" in result.output


def test_label_studio_config_generated_from_the_schema():
    schema = load_schema("claim-types")
    view = ElementTree.fromstring(labelling_config(schema, text_field="body"))
    labels = view.find("Labels")
    assert (labels.get("name"), labels.get("toName")) == (LABELS_CONTROL, TEXT_OBJECT)
    assert [label.get("value") for label in labels.findall("Label")] == schema.label_names
    assert [label.get("hint") for label in labels.findall("Label")] == [
        " ".join(schema.definition(name).split()) for name in schema.label_names]
    assert (view.find("Text").get("name"), view.find("Text").get("value")) == (TEXT_OBJECT, "$body")
    result = runner.invoke(app, ["labelstudio-config", "--schema", "ptc-propaganda"])
    assert result.exit_code == 0, result.output
    assert [x.get("value") for x in ElementTree.fromstring(result.output).iter("Label")] == ["propaganda"]


# ---- suggest goes through the scoring path: resume, lock, bad records, coded errors ---------------------------


@pytest.mark.parametrize("strategy", ["uncertainty", "disagreement", "random"])
def test_suggest_resumes_after_an_interrupt_without_lost_or_duplicated_documents(corpus, tmp_path, make_tiny_model,
                                                                                monkeypatch, strategy):
    from conftest import interrupt_on_call
    from stanceclf.infer.suggest import _SuggestRun

    model = make_tiny_model(thresholds={"prediction": 0.5, "threat_framing": 0.45, "policy_attribution": 0.55})
    common = dict(strategy=strategy, n=len(TEXTS), passes=3, seed=5, text_field="body", chunk_sentences=2,
                  progress=False, log=lambda message: None)
    clean = tmp_path / "clean.json"
    suggest([corpus], model, out=clean, **common)
    out = tmp_path / "tasks.json"
    real = interrupt_on_call(monkeypatch, _SuggestRun, "process_chunk", after=3)  # Ctrl-C in the 3rd chunk
    with pytest.raises(KeyboardInterrupt):
        suggest([corpus], model, out=out, **common)
    assert not out.exists() and (tmp_path / "tasks.json.progress.json").exists()
    done = json.loads((tmp_path / "tasks.json.progress.json").read_text())
    assert done["chunks"] == 2 and 0 < done["records_done"] < len(TEXTS)
    chunks = []
    monkeypatch.setattr(_SuggestRun, "process_chunk", lambda run, chunk: chunks.append(chunk) or real(run, chunk))
    summary = suggest([corpus], model, out=out, **common)
    assert summary.resumed_from == done["records_done"] and summary.documents == len(TEXTS)
    assert sum(len(chunk.documents) for chunk in chunks) == len(TEXTS) - done["documents"]  # nothing done twice
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(task["data"]["doc_id"] for task in tasks) == sorted(TEXTS)  # each document once
    assert out.read_bytes() == clean.read_bytes()  # the picks, priorities and pre-annotations of a clean run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.json", "corpus.jsonl", "tasks.json"]


def test_suggest_interrupted_overwrite_keeps_the_earlier_tasks_until_it_replaces_them(corpus, tmp_path,
                                                                                       make_tiny_model, monkeypatch):
    from conftest import interrupt_on_call
    from stanceclf.infer.suggest import _SuggestRun

    model = make_tiny_model()
    out = tmp_path / "tasks.json"
    common = dict(text_field="body", chunk_sentences=2, out=out, progress=False, log=lambda message: None)
    suggest([corpus], model, n=2, **common)
    earlier = out.read_bytes()
    real = interrupt_on_call(monkeypatch, _SuggestRun, "process_chunk", after=2)
    with pytest.raises(KeyboardInterrupt):
        suggest([corpus], model, n=3, overwrite=True, **common)
    assert out.read_bytes() == earlier  # an interrupted --overwrite run lost nothing
    monkeypatch.setattr(_SuggestRun, "process_chunk", real)
    summary = suggest([corpus], model, n=3, **common)  # resumes the --overwrite run, and replaces the tasks
    assert summary.resumed_from > 0 and len(json.loads(out.read_text(encoding="utf-8"))) == 3


def test_suggest_resume_with_another_strategy_or_exclusion_is_refused_naming_it(corpus, tmp_path, make_tiny_model,
                                                                               monkeypatch):
    from conftest import interrupt_on_call
    from stanceclf.errors import ResumeError
    from stanceclf.infer.suggest import _SuggestRun

    model = make_tiny_model()
    out = tmp_path / "tasks.json"
    common = dict(text_field="body", chunk_sentences=2, out=out, progress=False)
    real = interrupt_on_call(monkeypatch, _SuggestRun, "process_chunk", after=2)
    with pytest.raises(KeyboardInterrupt):
        suggest([corpus], model, **common)
    monkeypatch.setattr(_SuggestRun, "process_chunk", real)
    with pytest.raises(ResumeError, match=r"--strategy was 'uncertainty', now 'random'; --seed was None, now 13"):
        suggest([corpus], model, strategy="random", **common)
    with pytest.raises(ResumeError, match=r"--exclude was '0 ids, sha256 [0-9a-f]{12}', now '1 ids, sha256"):
        suggest([corpus], model, exclude={"doc1"}, **common)
    assert suggest([corpus], model, n=2, **common).resumed_from > 0  # another n is fine: picks come at the end


def test_suggest_second_run_on_the_same_output_is_refused_at_once(corpus, tmp_path, make_tiny_model, monkeypatch):
    from stanceclf.infer.scoring.state import OutputPaths

    model = make_tiny_model()
    calls = []
    monkeypatch.setattr(type(model), "proba_and_truncation", lambda *args, **kwargs: calls.append(1))
    out = tmp_path / "tasks.json"
    with OutputPaths.beside(out).locked():  # a run writing this output right now
        with pytest.raises(ScoringSetupError, match=r"\[E031\] .*tasks.json: another stanceclf run is writing"):
            suggest([corpus], model, text_field="body", out=out, progress=False)
    assert calls == [] and not out.exists()


def test_suggest_existing_output_is_refused_before_any_scoring(corpus, tmp_path, make_tiny_model, monkeypatch):
    from stanceclf.infer.model import StanceModel

    model = make_tiny_model()
    out = tmp_path / "tasks.json"
    out.write_text("[]\n")
    real = StanceModel.proba_and_truncation
    calls = []
    monkeypatch.setattr(StanceModel, "proba_and_truncation", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(Exception, match=r"tasks.json: the output exists .*--overwrite"):
        suggest([corpus], model, text_field="body", out=out, progress=False)
    assert calls == [] and out.read_text() == "[]\n"
    summary = suggest([corpus], model, n=2, text_field="body", out=out, overwrite=True, progress=False)
    assert [t["data"]["doc_id"] for t in json.loads(out.read_text())] == [s.doc_id for s in summary.suggestions]


def test_suggest_skipped_bad_records_are_listed_beside_the_tasks(tmp_path, make_tiny_model):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "Prices will rise."}) + "\n" + json.dumps({"id": "b", "text": ""})
                    + "\n" + json.dumps({"id": "a", "text": "Rates may fall."}) + "\n", encoding="utf-8")
    out = tmp_path / "tasks.json"
    summary = suggest([path], make_tiny_model(), out=out, on_error="skip", progress=False, log=lambda message: None)
    assert summary.skipped == 2 and [s.doc_id for s in summary.suggestions] == ["a"]
    errors = [json.loads(line) for line in (tmp_path / "tasks.json.errors.jsonl").read_text().splitlines()]
    assert [(e["doc_id"], e["record"]) for e in errors] == [("b", 1), ("a", 2)]
    assert "duplicate document id 'a'" in errors[1]["error"]


def test_suggest_killed_after_publishing_its_error_log_finishes_with_that_log(tmp_path, make_tiny_model, monkeypatch):
    from pathlib import Path

    from stanceclf.infer.scoring.state import PROGRESS_SUFFIX

    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "Prices will rise."}) + "\n" + json.dumps({"id": "b", "text": ""})
                    + "\n", encoding="utf-8")
    out, model = tmp_path / "tasks.json", make_tiny_model()
    progress, real_unlink = tmp_path / f"tasks.json{PROGRESS_SUFFIX}", Path.unlink

    def killed_at_the_progress_file(self, *args, **kwargs):  # after the log took its final name
        if self == progress:
            raise KeyboardInterrupt
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", killed_at_the_progress_file)
    with pytest.raises(KeyboardInterrupt):
        suggest([path], model, out=out, on_error="skip", progress=False, log=lambda message: None)
    monkeypatch.undo()
    assert progress.exists() and (tmp_path / "tasks.json.errors.jsonl").exists()
    summary = suggest([path], model, out=out, on_error="skip", progress=False, log=lambda message: None)
    assert summary.skipped == 1 and [s.doc_id for s in summary.suggestions] == ["a"]
    assert [json.loads(line)["doc_id"] for line in (tmp_path / "tasks.json.errors.jsonl").read_text().splitlines()] \
        == ["b"]
    assert not (tmp_path / "tasks.json.errors.jsonl.partial").exists()


def test_suggest_resumed_with_a_lower_max_chars_names_the_picked_document_it_cannot_read(corpus, tmp_path,
                                                                                       make_tiny_model, monkeypatch):
    """--max-chars is not part of what a resume must share (raising it follows an error's advice); lowered, a
    document scored before the interrupt cannot be read again for its tasks: a coded error naming it."""
    from conftest import interrupt_on_call
    from stanceclf.infer.suggest import _SuggestRun

    model = make_tiny_model()
    common = dict(strategy="random", n=len(TEXTS), seed=5, text_field="body", chunk_sentences=2, progress=False,
                  log=lambda message: None)
    out = tmp_path / "tasks.json"
    interrupt_on_call(monkeypatch, _SuggestRun, "process_chunk", after=3)
    with pytest.raises(KeyboardInterrupt):
        suggest([corpus], model, out=out, **common)
    monkeypatch.undo()
    with pytest.raises(InputRecordError, match="cannot be read again") as refused:  # doc0 was scored first
        suggest([corpus], model, out=out, max_chars=len(TEXTS["doc0"]) - 1, on_error="skip", **common)
    assert "corpus.jsonl:" in str(refused.value)
