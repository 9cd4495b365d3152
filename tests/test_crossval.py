"""Cross-validation, leave-one-source-out, out-of-fold thresholds and learning curves (tiny models)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stanceclf.cli import app
from stanceclf.data.dataset import BuildConfig, assign_folds, sentence_examples
from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.data.readers import write_native
from stanceclf.data.schema import load_schema
from stanceclf.errors import EvaluationError, RecipeError
from stanceclf.infer.model import StanceModel
from stanceclf.train.calibration import calibrate
from stanceclf.train.crossval import cross_validate
from stanceclf.train.fold_runner import FoldRunner, Setup, read_fold_record
from stanceclf.train.folds import Pool, default_dev_fraction, kept_folds, kfold_plan, source_plan
from stanceclf.train.learning_curve import learning_curve
from stanceclf.train.phases import prepare_dataset
from stanceclf.train.recipe import load_recipe
from stanceclf.train.signature import SIGNATURE_FORMAT, signature_format
from stanceclf.train.trainer import train

from conftest import REPO, needs_shared
from test_training import save_tiny_base, tiny, toy_corpus, write_recipe

FEW_STEPS = ["training.max_steps=2", "training.eval_every=2"]
SET_FEW_STEPS = [part for override in FEW_STEPS for part in ("--set", override)]
runner = CliRunner()


class CountingModels:
    """The seam that counts trainings: every fold asks it for one fresh tiny model."""

    def __init__(self, base_tokenizer):
        self.base_tokenizer = base_tokenizer
        self.made = 0

    def __call__(self):
        self.made += 1
        return tiny(self.base_tokenizer)


def fold_records(folder) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted((folder / "folds").glob("*.json"))}


def test_crossval_folds_are_disjoint_cover_every_document_balanced_and_deterministic():
    schema = load_schema("claim-types")
    by_doc = {doc.doc_id: sentence_examples(doc, schema, BuildConfig()) for doc in toy_corpus(60, seed=1)}
    folds = assign_folds(by_doc, 5, seed=7)
    assert sorted(folds) == sorted(by_doc)  # each document in exactly one fold
    assert sorted(set(folds.values())) == [0, 1, 2, 3, 4]
    assert assign_folds(by_doc, 5, seed=7) == folds
    assert assign_folds(by_doc, 5, seed=8) != folds
    for j, label in enumerate(schema.label_names):
        per_doc = {d: sum(e["labels"][j] for e in examples) for d, examples in by_doc.items()}
        per_fold = [sum(n for d, n in per_doc.items() if folds[d] == k) for k in range(5)]
        # Each fold's positives are within one document's worth of its fifth of the total.
        assert max(abs(n - sum(per_doc.values()) / 5) for n in per_fold) <= max(per_doc.values()), (label, per_fold)


def test_crossval_kept_folds_keep_each_earlier_document_in_its_fold_and_spread_the_new_ones(tmp_path):
    schema = load_schema("claim-types")
    corpus = toy_corpus(60, seed=1)
    earlier = {doc.doc_id: sentence_examples(doc, schema, BuildConfig()) for doc in corpus[:40]}
    grown = {doc.doc_id: sentence_examples(doc, schema, BuildConfig()) for doc in corpus}
    old = assign_folds(earlier, 5, seed=7)
    assert {d: k for d, k in assign_folds(grown, 5, seed=7).items() if d in old} != old  # why the option exists
    out = tmp_path / "earlier-cv"
    (out / "folds").mkdir(parents=True)
    for k in range(5):
        test = sorted(d for d, fold in old.items() if fold == k)
        (out / "folds" / f"fold-{k + 1}.json").write_text(json.dumps({"name": f"fold-{k + 1}",
                                                                      "documents": {"test": test}}))
    kept = kept_folds(out, 5)
    assert kept == old
    folds = assign_folds(grown, 5, seed=7, fixed=kept)
    assert {d: folds[d] for d in old} == old and sorted(folds) == sorted(grown)
    added = [folds[d] for d in grown if d not in old]
    assert sorted(set(added)) == [0, 1, 2, 3, 4]  # the 20 new documents fill every fold, not one
    sizes = [sum(len(grown[d]) for d in grown if folds[d] == k) for k in range(5)]
    assert max(sizes) - min(sizes) <= max(len(examples) for examples in grown.values()) * 2, sizes
    with pytest.raises(EvaluationError, match="needs an earlier 6-fold cross-validation .* found 5 fold record"):
        kept_folds(out, 6)
    with pytest.raises(EvaluationError, match="needs an earlier 4-fold"):
        kept_folds(out, 4)
    in_fold_1 = next(d for d, fold in old.items() if fold == 0)
    (out / "folds" / "fold-2.json").write_text(json.dumps({"name": "fold-2", "documents": {"test": [in_fold_1]}}))
    with pytest.raises(EvaluationError, match="also a test document of fold-"):
        kept_folds(out, 5)


def test_crossval_keep_folds_of_is_signed_only_when_set(tmp_path):
    """A recipe without the option signs its runs as before it existed: their checkpoints still resume."""
    from stanceclf.train.signature import run_signature

    plain = load_recipe(write_recipe(tmp_path))
    kept = load_recipe(write_recipe(tmp_path), ['evaluation.keep_folds_of="earlier-cv"'])
    assert "keep_folds_of" not in run_signature(plain, "fp")["recipe"]["evaluation"]
    assert run_signature(kept, "fp")["recipe"]["evaluation"]["keep_folds_of"] == "earlier-cv"


def test_crossval_later_distill_options_are_signed_only_when_set(tmp_path, base_tokenizer):
    """max_unlabelled changes the training rows and is signed when set; teacher_folds_of only says where the
    fold teachers are (their own signatures are signed), so it never is."""
    from stanceclf.train.signature import run_signature

    path = write_distill_recipes(tmp_path, base_tokenizer)
    plain = run_signature(load_recipe(path), "fp")["recipe"]["distill"]
    assert "max_unlabelled" not in plain and "teacher_folds_of" not in plain
    changed = load_recipe(path, ["distill.max_unlabelled=100", 'distill.teacher_folds_of="cv"'])
    signed = run_signature(changed, "fp")["recipe"]["distill"]
    assert signed["max_unlabelled"] == 100 and "teacher_folds_of" not in signed


def test_crossval_report_has_mean_sd_per_label_and_resume_reuses_finished_folds(tmp_path, base_tokenizer, caplog):
    recipe = load_recipe(write_recipe(tmp_path), FEW_STEPS)
    models, messages, out = CountingModels(base_tokenizer), [], tmp_path / "cv"
    report = cross_validate(recipe, out, folds=5, make_model=models, tokenizer=base_tokenizer, progress=False,
                            echo=messages.append)
    assert models.made == 5
    assert any(m.startswith("fold 3/5 (fold-3): ") and m.endswith(" test") for m in messages)
    records = fold_records(out)
    everything = {doc.doc_id for doc in toy_corpus()}
    tested = [d for r in records.values() for d in r["documents"]["test"]]
    assert sorted(tested) == sorted(everything)  # disjoint folds covering every document once
    for r in records.values():
        train, dev, test = (set(r["documents"][s]) for s in ("train", "dev", "test"))
        assert not (train & dev or train & test or dev & test) and train | dev | test == everything
    for label in recipe_labels():
        for metric in ("f1", "precision", "recall", "pr_auc"):
            values = [f["test_report"]["labels"][label][metric] for f in report["per_fold"]]
            stats = report["mean_sd"]["labels"][label][metric]
            defined = [v for v in values if v is not None]  # undefined where a fold has no positive
            # The toy corpus has no policy_attribution span: its recall, F1 and PR-AUC are undefined.
            assert len(defined) == (0 if label == "policy_attribution" and metric != "precision" else
                                    len(defined) if label == "policy_attribution" else 5)
            if not defined:
                assert stats == {"mean": None, "sd": None, "folds": 0}
                continue
            assert stats["folds"] == len(defined) and stats["mean"] == pytest.approx(np.mean(defined))
            if len(defined) > 1:
                assert stats["sd"] == pytest.approx(np.std(defined, ddof=1))
    assert report["pooled"]["examples"] == sum(len(r["labels"]) for r in records.values()) == 240
    markdown = (out / "report.md").read_text()
    assert "±" in markdown and all(f"| {label} |" in markdown for label in recipe_labels())
    assert json.loads((out / "report.json").read_text())["mean_sd"] == report["mean_sd"]

    (out / "folds" / "fold-3.json").unlink()  # as if interrupted while training fold 3
    again = cross_validate(recipe, out, folds=5, make_model=models, tokenizer=base_tokenizer, progress=False,
                           echo=messages.append)
    assert models.made == 6
    assert sum("reusing the finished fold" in m for m in messages) == 4
    for before, after in zip(report["per_fold"], again["per_fold"]):
        if before["name"] != "fold-3":
            assert after["test_report"] == before["test_report"]
    # A saved fold is reused only by the same recipe (but its paths and split settings), data and split.
    changed = load_recipe(write_recipe(tmp_path), FEW_STEPS + ["training.learning_rate=1e-3"])
    moved = load_recipe(write_recipe(tmp_path), FEW_STEPS + ["run_dir=elsewhere", "evaluation.folds=7"])
    fold = records["fold-1"]["documents"]
    split = (fold["train"], fold["dev"], fold["test"])
    assert signature(moved, *split) == records["fold-1"]["signature"] == signature(recipe, *split)
    assert signature(changed, *split) != signature(recipe, *split)
    assert signature(recipe, fold["train"][1:], fold["dev"], fold["test"]) != signature(recipe, *split)

    # A record of an earlier format (format 1 had no number) is read as such, and its fold trained again.
    assert {record["format"] for record in records.values()} == {SIGNATURE_FORMAT}
    earlier = records["fold-2"]
    del earlier["format"]
    (out / "folds" / "fold-2.json").write_text(json.dumps(earlier))
    with caplog.at_level(logging.WARNING, logger="stanceclf.train.fold_runner"):
        cross_validate(recipe, out, folds=5, make_model=models, tokenizer=base_tokenizer, progress=False)
    assert models.made == 7
    assert "fold-2.json is a fold record of format 1, signed otherwise than this stanceclf signs" in caplog.text
    assert signature_format(read_fold_record(out / "folds" / "fold-2.json")) == SIGNATURE_FORMAT


def signature(recipe, *split) -> str:
    """The key a fold of ``recipe`` on the toy data is saved under."""
    schema = load_schema("claim-types")
    dataset, info, _ = prepare_dataset(recipe, schema)
    return FoldRunner(recipe, schema, Pool(dataset, info["fingerprint"]), recipe.run_path, None, None).signature(*split)


def recipe_labels() -> list[str]:
    return load_schema("claim-types").label_names


def sourced_corpus() -> list[AnnotatedDocument]:
    """Toy documents named like the project's sources, and two seed articles in no source."""
    names = [f"EN_UA_{i:02d}" for i in range(8)] + [f"EN_CC_{i:02d}" for i in range(8)] + \
            [f"article{i:03d}" for i in range(8)] + ["000_seed", "001_seed"]
    return [AnnotatedDocument(name, doc.text, doc.spans, doc.annotators)
            for name, doc in zip(names, toy_corpus(len(names)))]


def write_sourced_recipe(tmp_path, base: str = "tiny-in-process"):
    path = write_recipe(tmp_path, base=base)
    write_native(sourced_corpus(), tmp_path / "toy.jsonl")
    path.write_text(path.read_text() + '\n[evaluation]\nsources = { UA = "EN_UA_*", CC = "EN_CC_*", '
                                       'PTC = ["article*"] }\n')
    return path


def test_crossval_by_source_holds_out_exactly_one_source_per_fold(tmp_path, base_tokenizer):
    """Through the command line, with the recipe's own base (a local tiny model folder)."""
    base = save_tiny_base(tmp_path / "tiny-base", base_tokenizer)
    recipe = write_sourced_recipe(tmp_path, base=str(base))
    out = tmp_path / "by-source"
    result = runner.invoke(app, ["cross-validate", str(recipe), "--by-source", "--out", str(out), *SET_FEW_STEPS])
    assert result.exit_code == 0, result.output
    assert "Mean ± sd over 3 folds" in result.output and "never tested, only trained on" in result.output
    report = json.loads((out / "report.json").read_text())
    prefixes = {"UA": "EN_UA_", "CC": "EN_CC_", "PTC": "article"}
    assert [fold["name"] for fold in report["per_fold"]] == ["UA", "CC", "PTC"]
    for name, record in fold_records(out).items():
        assert record["documents"]["test"] == sorted(f"{prefixes[name]}{i:0{3 if name == 'PTC' else 2}d}"
                                                     for i in range(8))
        trained = set(record["documents"]["train"]) | set(record["documents"]["dev"])
        assert {"000_seed", "001_seed"} <= trained and not any(d.startswith(prefixes[name]) for d in trained)
    assert report["training_only_documents"] == ["000_seed", "001_seed"]


def test_crossval_sources_must_be_two_and_must_not_overlap(tmp_path):
    recipe = load_recipe(write_sourced_recipe(tmp_path))
    schema = load_schema("claim-types")
    dataset, info, _ = prepare_dataset(recipe, schema)
    pool = Pool(dataset, info["fingerprint"])
    with pytest.raises(RecipeError, match=r"\[E010\].*at least two sources"):
        source_plan(pool, {"UA": "EN_UA_*"})
    with pytest.raises(RecipeError, match=r"'EN_UA_00' matches the patterns of several sources \(UA, EN\)"):
        source_plan(pool, {"UA": "EN_UA_*", "EN": "EN_*"})
    with pytest.raises(EvaluationError, match=r"\[E040\].*source\(s\) XX match no document"):
        source_plan(pool, {"UA": "EN_UA_*", "XX": "nothing*"})
    with pytest.raises(RecipeError, match="source names"):
        load_recipe(write_sourced_recipe(tmp_path), ['evaluation.sources={"../x" = "a*", "b" = "b*"}'])


def test_crossval_oof_thresholds_are_calibrate_of_the_pooled_out_of_fold_logits(tmp_path, base_tokenizer):
    recipe = load_recipe(write_recipe(tmp_path), FEW_STEPS + ['calibration.thresholds="cross-validation"',
                                                              "calibration.folds=2"])
    trained = train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    records = fold_records(tmp_path / "run" / "oof-calibration")
    assert sorted(records) == ["fold-1", "fold-2"]
    dataset, _, _ = prepare_dataset(recipe, load_schema("claim-types"))
    train_docs, dev_docs = sorted(set(dataset["train"]["doc_id"])), sorted(set(dataset["dev"]["doc_id"]))
    assert sorted(d for r in records.values() for d in r["documents"]["test"]) == train_docs
    assert all(r["documents"]["dev"] == dev_docs for r in records.values())
    logits = np.concatenate([np.array(r["logits"]) for r in records.values()])
    y_true = np.concatenate([np.array(r["labels"]) for r in records.values()])
    assert len(y_true) == len(dataset["train"]) and y_true.sum() == np.array(dataset["train"]["labels"]).sum()
    temperatures, thresholds = calibrate(logits, y_true)
    saved = StanceModel.from_pretrained(tmp_path / "model")
    for model in (trained, saved):
        assert [model.manifest.thresholds[l] for l in model.labels] == pytest.approx(list(thresholds))
        assert [model.manifest.temperatures[l] for l in model.labels] == pytest.approx(list(temperatures))
    record = saved.manifest.training["calibration"]
    assert record["method"] == "cross-validation" and record["folds"] == 2 and record["documents"] == len(train_docs)
    assert record["out_of_fold"]["examples"] == len(y_true)
    assert "out-of-fold" in (tmp_path / "model" / "README.md").read_text()


def test_learning_curve_trains_on_the_given_numbers_of_articles(tmp_path, base_tokenizer):
    recipe = load_recipe(write_recipe(tmp_path), FEW_STEPS)
    models, out = CountingModels(base_tokenizer), tmp_path / "curve"
    with pytest.raises(EvaluationError, match=r"size 100 is more than the \d+ training articles"):
        learning_curve(recipe, [5, 100], out, folds=2, make_model=models, tokenizer=base_tokenizer, progress=False)
    assert models.made == 0
    report = learning_curve(recipe, [8, 3], out, folds=2, make_model=models, tokenizer=base_tokenizer, progress=False)
    assert models.made == 4
    assert [row["training_articles"] for row in report["sizes"]] == [3, 8]
    records = fold_records(out)
    for fold in ("fold-1", "fold-2"):
        small, large = records[f"{fold}-n3"], records[f"{fold}-n8"]
        assert len(small["documents"]["train"]) == 3 and len(large["documents"]["train"]) == 8
        assert set(small["documents"]["train"]) < set(large["documents"]["train"])  # nested subsets
        assert small["documents"]["dev"] == large["documents"]["dev"] and small["documents"]["test"] == \
            large["documents"]["test"]
    assert records["fold-1-n8"]["documents"]["test"] != records["fold-2-n8"]["documents"]["test"]
    assert report["sizes"][0]["macro"]["f1"]["folds"] == 2
    assert (out / "learning-curve.png").stat().st_size > 1000
    assert "| 3 |" in (out / "report.md").read_text()


def test_crossval_only_some_folds_gives_a_partial_report_that_later_runs_complete(tmp_path, base_tokenizer):
    base = save_tiny_base(tmp_path / "tiny-base", base_tokenizer)
    recipe, out = write_recipe(tmp_path, base=str(base)), tmp_path / "cv"
    command = ["cross-validate", str(recipe), "--folds", "3", "--out", str(out), *SET_FEW_STEPS]
    result = runner.invoke(app, [*command, "--only", "fold-2"])
    assert result.exit_code == 0, result.output
    assert sorted(fold_records(out)) == ["fold-2"]
    report = json.loads((out / "report.json").read_text())
    assert report["folds"] == 3 and report["folds_finished"] == ["fold-2"] and len(report["per_fold"]) == 1
    assert "Partial: 1 of 3 folds finished (fold-2)" in result.output
    result = runner.invoke(app, [*command, "--only", "fold-1,fold-3"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["folds_finished"] == ["fold-1", "fold-2", "fold-3"] and "Partial" not in result.output
    assert report["pooled"]["examples"] == 240  # every document tested once, fold 2's from the first run
    result = runner.invoke(app, [*command, "--only", "fold-4"])
    assert result.exit_code == 1 and "no fold is named fold-4; the folds are fold-1, fold-2, fold-3" in result.output


def test_crossval_report_counts_folds_another_process_finished_meanwhile(tmp_path, base_tokenizer, monkeypatch):
    """Two processes run other folds into one folder (--only): the one that ends last reports both."""
    recipe = load_recipe(write_recipe(tmp_path), FEW_STEPS)
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "cv"
    cross_validate(recipe, elsewhere, folds=3, only=["fold-1"], make_model=CountingModels(base_tokenizer),
                   tokenizer=base_tokenizer, progress=False)
    real = FoldRunner.run

    def fold_1_lands_meanwhile(runner, name, *args):
        (out / "folds").mkdir(parents=True, exist_ok=True)
        shutil.copy(elsewhere / "folds" / "fold-1.json", out / "folds")  # the other process finished it
        return real(runner, name, *args)

    monkeypatch.setattr(FoldRunner, "run", fold_1_lands_meanwhile)
    report = cross_validate(recipe, out, folds=3, only=["fold-2"], make_model=CountingModels(base_tokenizer),
                            tokenizer=base_tokenizer, progress=False)
    assert report["folds_finished"] == ["fold-1", "fold-2"]


def test_crossval_cli_errors_name_what_is_missing(tmp_path):
    recipe = write_recipe(tmp_path)
    result = runner.invoke(app, ["cross-validate", str(recipe), "--by-source", "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "[evaluation] sources" in result.output
    result = runner.invoke(app, ["learning-curve", str(recipe), "--sizes", "10,many"])
    assert result.exit_code == 1 and "--sizes '10,many' must be whole numbers" in result.output


#: Each in one labelled document only ("own-N"), and all in the unlabelled text.
OWN_SENTENCES = {f"own-{n}": f"A bridge of glass number {n} opened in Oslo." for n in range(8)}


def write_distill_recipes(tmp_path, base_tokenizer, student_extra: str = "") -> Path:
    """A teacher recipe (a saved tiny base, as a user's own base would be) and a student recipe whose
    finished teacher does not exist: a fold must never need it."""
    base = save_tiny_base(tmp_path / "tiny-base", base_tokenizer)
    teacher = tmp_path / "teacher.toml"
    text = write_recipe(tmp_path, base=str(base)).read_text()
    teacher.write_text(text.replace('name = "toy"', 'name = "toy-teacher"') + "max_steps = 2\neval_every = 2\n")
    student = write_recipe(tmp_path)
    # With a positive each, so that the balanced split puts them in every split like the others.
    forecast = "Experts expect the talks to fail."
    own = [AnnotatedDocument(doc_id, f"{sentence} {forecast} ",
                             [Span(len(sentence) + 1, len(sentence) + 1 + len(forecast), "prediction", "toy")],
                             ("toy",))
           for doc_id, sentence in OWN_SENTENCES.items()]
    write_native([*toy_corpus(), *own], tmp_path / "toy.jsonl")
    (tmp_path / "unlabelled.jsonl").write_text(json.dumps({"id": "u1", "text": " ".join(
        ["Markets may fall further next week.", *OWN_SENTENCES.values()])}) + "\n")
    student.write_text(student.read_text() + f'''
[distill]
teacher = "no-such-finished-teacher"
teacher_recipe = "teacher.toml"
unlabelled = ["unlabelled.jsonl"]
soft_on_labelled = true
{student_extra}
''')
    return student


def test_crossval_distill_recipe_trains_each_folds_teacher_on_that_folds_documents(tmp_path, base_tokenizer):
    student = load_recipe(write_distill_recipes(tmp_path, base_tokenizer), FEW_STEPS)
    models, messages, out = CountingModels(base_tokenizer), [], tmp_path / "cv"
    report = cross_validate(student, out, folds=2, make_model=models, tokenizer=base_tokenizer, progress=False,
                            echo=messages.append)
    assert models.made == 2 and sum("training teacher 'toy-teacher'" in m for m in messages) == 2
    students, teachers = fold_records(out), fold_records(out / "teachers" / "1-toy-teacher")
    assert sorted(students) == sorted(teachers) == ["fold-1", "fold-2"]
    for name, record in students.items():
        # The fold's teacher learned from exactly the student's training documents, never from its test ones.
        assert teachers[name]["documents"] == record["documents"]
        assert record["teachers"][0]["signature"] == teachers[name]["signature"]
        assert record["teachers"][0]["test_report"] == teachers[name]["test_report"]
    assert teachers["fold-1"]["signature"] != teachers["fold-2"]["signature"]
    # Each fold's student learned from its own teacher's scores; the large fold teachers are gone.
    scored = {name: scored_texts(out / "teacher-scores", name) for name in students}
    assert all(scored.values())
    # A test document's sentence is never a teaching example in its fold, though the unlabelled text has it.
    for name, record in students.items():
        tested = {OWN_SENTENCES[doc] for doc in record["documents"]["test"] if doc in OWN_SENTENCES}
        assert tested and not tested & scored[name]
        assert "Markets may fall further next week." in scored[name]
    assert not any((out / "teachers" / "1-toy-teacher" / "models").glob("*"))
    assert report["teachers"][0]["recipe"] == "toy-teacher"
    assert report["teachers"][0]["mean_sd"]["macro"]["f1"]["folds"] == 2
    assert report["teachers"][0]["per_fold_macro_f1"] == [teachers[n]["test_report"]["macro"]["f1"]
                                                          for n in ("fold-1", "fold-2")]
    assert "## Teacher `toy-teacher`" in (out / "report.md").read_text()

    (out / "folds" / "fold-2.json").unlink()  # interrupted after fold 2's teacher was trained and deleted
    messages.clear()
    again = cross_validate(student, out, folds=2, make_model=models, tokenizer=base_tokenizer, progress=False,
                           echo=messages.append)
    assert models.made == 3 and sum("training teacher" in m for m in messages) == 1
    assert again["per_fold"][0]["test_report"] == report["per_fold"][0]["test_report"]
    # A finished student fold is reused only with the same teacher recipe.
    setup = Setup.of(student, out, tokenizer=base_tokenizer, progress=False)
    split = [students["fold-1"]["documents"][s] for s in ("train", "dev", "test")]
    assert setup.runner.signature(*split) == students["fold-1"]["signature"]
    changed = ["training.learning_rate=1e-3"]
    assert Setup.of(student, out, progress=False, teacher_overrides=changed).runner.signature(*split) != \
        students["fold-1"]["signature"]
    teacher_file = tmp_path / "teacher.toml"
    teacher_file.write_text(teacher_file.read_text().replace("learning_rate = 2e-3", "learning_rate = 1e-3"))
    assert Setup.of(student, out, progress=False).runner.signature(*split) != students["fold-1"]["signature"]


def scored_texts(folder, fold: str) -> set[str]:
    """The sentences a fold's teacher scored for its student (its score cache)."""
    import pyarrow.parquet as pq

    (cache,) = [path for path in folder.iterdir() if path.is_dir() and path.name.startswith(f"{fold}-")]
    return {text for part in cache.glob("part-*.parquet") for text in pq.read_table(part)["text"].to_pylist()}


def test_crossval_distill_reuses_a_trained_teacher_when_its_student_was_interrupted(tmp_path, base_tokenizer):
    student = load_recipe(write_distill_recipes(tmp_path, base_tokenizer), FEW_STEPS)
    out, messages = tmp_path / "cv", []
    setup = Setup.of(student, out, tokenizer=base_tokenizer, progress=False)
    plan = kfold_plan(setup.pool, 2, student.seed)
    (train, dev), = setup.pool.fold_splits(plan[:1], default_dev_fraction(student, setup.info), student.seed)
    teacher = setup.runner.teachers[0].run("fold-1", train, dev, plan[0].test)  # then the student was stopped
    assert (out / "teachers" / "1-toy-teacher" / "models" / "fold-1" / "model.safetensors").exists()
    cross_validate(student, out, folds=2, make_model=CountingModels(base_tokenizer), tokenizer=base_tokenizer,
                   progress=False, echo=messages.append)
    assert sum("reusing the trained teacher 'toy-teacher'" in m for m in messages) == 1
    assert sum("training teacher 'toy-teacher'" in m for m in messages) == 1  # fold 2's only
    record = json.loads((out / "folds" / "fold-1.json").read_text())
    assert record["teachers"][0]["signature"] == teacher["signature"]
    assert record["teachers"][0]["wall_seconds"] == teacher["wall_seconds"]  # the same training, not a new one
    assert not (out / "teachers" / "1-toy-teacher" / "models" / "fold-1").exists()


def test_crossval_distill_reuses_the_fold_teachers_an_earlier_cross_validation_kept(tmp_path, base_tokenizer):
    path = write_distill_recipes(tmp_path, base_tokenizer, 'teacher_folds_of = "teacher-cv"')
    teacher_cv = tmp_path / "teacher-cv"
    teacher = load_recipe(tmp_path / "teacher.toml", FEW_STEPS)
    # Without --keep-models the teacher's folds are recorded but cannot teach: the student says what to run.
    cross_validate(teacher, teacher_cv, folds=2, tokenizer=base_tokenizer, progress=False)
    student = load_recipe(path, FEW_STEPS)
    with pytest.raises(EvaluationError, match="not finished with a kept model here.*--keep-models"):
        cross_validate(student, tmp_path / "cv", folds=2, make_model=CountingModels(base_tokenizer),
                       tokenizer=base_tokenizer, progress=False, teacher_overrides=FEW_STEPS)
    teachers = cross_validate(teacher, teacher_cv, folds=2, tokenizer=base_tokenizer, progress=False,
                              keep_models=True)
    assert sorted(p.name for p in (teacher_cv / "models").iterdir()) == ["fold-1", "fold-2"]
    for record in fold_records(teacher_cv).values():  # which document each test row is from, in row order
        assert len(record["row_documents"]) == len(record["logits"])
        assert sorted(set(record["row_documents"])) == record["documents"]["test"]
        assert record["row_documents"] == sorted(record["row_documents"])
    messages = []
    report = cross_validate(student, tmp_path / "cv", folds=2, make_model=CountingModels(base_tokenizer),
                            tokenizer=base_tokenizer, progress=False, echo=messages.append,
                            teacher_overrides=FEW_STEPS)
    assert sum("reusing the trained teacher 'toy-teacher'" in m for m in messages) == 2
    assert not any("training teacher" in m for m in messages) and not (tmp_path / "cv" / "teachers").exists()
    assert report["teachers"][0]["per_fold_macro_f1"] == [f["test_report"]["macro"]["f1"] for f in teachers["per_fold"]]
    # The borrowed teachers are not the student's to delete: another student can use them too.
    assert all((teacher_cv / "models" / name / "model.safetensors").exists() for name in ("fold-1", "fold-2"))
    # --no-resume retrains the student's folds, never the borrowed teachers.
    messages.clear()
    cross_validate(student, tmp_path / "cv", folds=2, make_model=CountingModels(base_tokenizer), resume=False,
                   tokenizer=base_tokenizer, progress=False, echo=messages.append, teacher_overrides=FEW_STEPS)
    assert sum("reusing the trained teacher" in m for m in messages) == 2
    # Other plans cut other folds: a learning curve trains its teachers, as without the option.
    learning_curve(student, [3], tmp_path / "curve", folds=2, tokenizer=base_tokenizer,
                   make_model=CountingModels(base_tokenizer), progress=False, teacher_overrides=FEW_STEPS)
    assert sorted(fold_records(tmp_path / "curve" / "teachers" / "1-toy-teacher")) == ["fold-1-n3", "fold-2-n3"]
    # A teacher cross-validated with another recipe is not the student's fold teacher.
    with pytest.raises(EvaluationError, match="not finished with a kept model here"):
        cross_validate(student, tmp_path / "cv2", folds=2, make_model=CountingModels(base_tokenizer),
                       tokenizer=base_tokenizer, progress=False,
                       teacher_overrides=[*FEW_STEPS, "training.learning_rate=1e-3"])
    with pytest.raises(RecipeError, match="holds no fold records"):
        Setup.of(load_recipe(path, ['distill.teacher_folds_of="nowhere"']), tmp_path / "cv3", progress=False,
                 borrow_teachers=True)
    with pytest.raises(RecipeError, match=r"names 2 folder\(s\) for 1 teacher recipe"):
        load_recipe(path, ['distill.teacher_folds_of=["a", "b"]'])


def test_learning_curve_of_a_distill_recipe_trains_a_teacher_per_size(tmp_path, base_tokenizer):
    student = load_recipe(write_distill_recipes(tmp_path, base_tokenizer), FEW_STEPS)
    out = tmp_path / "curve"
    learning_curve(student, [3], out, folds=2, tokenizer=base_tokenizer, make_model=CountingModels(base_tokenizer),
                   progress=False)
    teachers = fold_records(out / "teachers" / "1-toy-teacher")
    assert sorted(teachers) == ["fold-1-n3", "fold-2-n3"]
    assert all(len(record["documents"]["train"]) == 3 for record in teachers.values())


@pytest.mark.parametrize("change, message", [
    ('teacher_recipe = "teacher.toml"', None),
    ("", "needs distill.teacher_recipe"),
    ('teacher_recipe = "other-data.toml"', "builds other data"),
    ('teacher_recipe = "distilled.toml"', "must not have a \\[distill\\] section"),
    ('teacher_recipe = "other-labels.toml"', "other labels"),
    ('teacher_recipe = "missing.toml"', "distill.teacher_recipe 'missing.toml': the teacher's recipe cannot be used"),
])
def test_crossval_distill_recipe_checks_its_teacher_recipes_before_training(tmp_path, base_tokenizer, change,
                                                                            message):
    path = write_distill_recipes(tmp_path, base_tokenizer)
    teacher = (tmp_path / "teacher.toml").read_text()
    (tmp_path / "other-data.toml").write_text(teacher.replace("[data]", "[data]\nmin_overlap_chars = 3"))
    (tmp_path / "distilled.toml").write_text(teacher + '[distill]\nteacher = "x"\nsoft_on_labelled = true\n')
    (tmp_path / "other-labels.toml").write_text(teacher.replace('schema = "claim-types"', 'schema = "ptc-propaganda"'))
    path.write_text(path.read_text().replace('teacher_recipe = "teacher.toml"', change))
    recipe = load_recipe(path, FEW_STEPS)
    if message is None:
        assert Setup.of(recipe, tmp_path / "cv", progress=False).runner.teachers[0].recipe.name == "toy-teacher"
        return
    with pytest.raises(RecipeError, match=message):
        cross_validate(recipe, tmp_path / "cv", folds=2, make_model=CountingModels(base_tokenizer), progress=False)
    assert not (tmp_path / "cv" / "folds").exists()


def test_crossval_distill_ensemble_trains_each_teacher_recipe_in_its_own_folder(tmp_path, base_tokenizer):
    path = write_distill_recipes(tmp_path, base_tokenizer)
    (tmp_path / "second.toml").write_text((tmp_path / "teacher.toml").read_text().replace("toy-teacher", "second"))
    recipe = load_recipe(path, ['distill.teacher=["a", "b"]', 'distill.teacher_recipe=["teacher.toml", "second.toml"]'])
    runners = Setup.of(recipe, tmp_path / "cv", progress=False).runner.teachers
    assert [(r.recipe.name, r.work_dir.name) for r in runners] == [("toy-teacher", "1-toy-teacher"), ("second", "2-second")]


def test_crossval_distill_teacher_recipes_must_match_the_teachers(tmp_path, base_tokenizer):
    path = write_distill_recipes(tmp_path, base_tokenizer)
    with pytest.raises(RecipeError, match=r"names 1 recipe\(s\) for 2 teacher\(s\)"):
        load_recipe(path, ['distill.teacher=["a", "b"]'])
    path.write_text(path.read_text().replace('teacher_recipe = "teacher.toml"', ""))
    with pytest.raises(RecipeError, match=r"'cross-validation' with \[distill\] needs distill.teacher_recipe"):
        load_recipe(path, ['calibration.thresholds="cross-validation"'])


def test_crossval_oof_thresholds_of_a_distill_recipe_train_a_teacher_per_fold(tmp_path, base_tokenizer,
                                                                               tiny_model_dir):
    from test_distill import student as student_model

    path = write_distill_recipes(tmp_path, base_tokenizer, student_extra="student_layers = [0, 2]")
    recipe = load_recipe(path, FEW_STEPS + ['calibration.thresholds="cross-validation"', "calibration.folds=2",
                                            f'distill.teacher="{tiny_model_dir}"'])  # the final student's
    trained = train(recipe, model=student_model(base_tokenizer, layers=4), tokenizer=base_tokenizer, progress=False)
    oof = tmp_path / "run" / "oof-calibration"
    students, teachers = fold_records(oof), fold_records(oof / "teachers" / "1-toy-teacher")
    assert sorted(students) == sorted(teachers) == ["fold-1", "fold-2"]
    dataset, _, _ = prepare_dataset(recipe, load_schema("claim-types"))
    test_sentences = set(dataset["test"]["text"]) & set(OWN_SENTENCES.values())
    assert test_sentences  # the recipe's test split holds some of them (fixed by the seed)
    for name, record in students.items():
        assert teachers[name]["documents"] == record["documents"]  # each fold's teacher, on that fold's documents
        # The recipe's test sentences teach no out-of-fold student either.
        assert not scored_texts(oof / "teacher-scores", name) & test_sentences
    logits = np.concatenate([np.array(r["logits"]) for r in students.values()])
    y_true = np.concatenate([np.array(r["labels"]) for r in students.values()])
    _, thresholds = calibrate(logits, y_true)
    assert [trained.manifest.thresholds[l] for l in trained.labels] == pytest.approx(list(thresholds))
    assert trained.manifest.training["calibration"]["method"] == "cross-validation"
    # The out-of-fold students were cut from the 4-layer base like the final one, not from a cut copy.
    assert trained.model.config.num_hidden_layers == 2


#: Fold records kept in benchmarks/results/crossval/ (see its README): up to an hour of training each.
KEPT_RECORDS = REPO / "benchmarks" / "results" / "crossval"


def test_crossval_kept_fold_records_are_read_as_format_1():
    """The kept records were signed before fold records had a format number: each one still reads as a
    fold record, and as one of format 1, never as one of the current format."""
    records = {path: read_fold_record(path) for path in sorted(KEPT_RECORDS.glob("**/folds/*.json"))}
    earlier = [path for path, record in records.items() if "format" not in record]
    assert len(earlier) >= 20
    for path, record in records.items():
        assert record["name"] == path.stem, path
        # Those signed before the number existed read as format 1; later ones carry theirs.
        assert signature_format(record) == (1 if path in earlier else record["format"]), path
        assert path not in earlier or signature_format(record) != SIGNATURE_FORMAT, path


@needs_shared
def test_crossval_kept_fold_records_still_match_their_recipe(tmp_path, caplog):
    """A kept record is a fold of its recipe as the current code plans it: the same data and the same
    documents in train, dev and test, so that new folds can be set beside it. Being of format 1, it is
    not reused by a rerun of its command: the fold is trained again, and the run says why."""
    folder = KEPT_RECORDS / "claim-types"
    record = read_fold_record(folder / "folds" / "fold-4.json")
    report = json.loads((folder / "report.json").read_text())
    # the command the README of that folder gives for this run
    recipe = load_recipe(REPO / "training" / "claim-types.toml", ["training.precision=auto"])
    setup = Setup.of(recipe, tmp_path, progress=False)
    assert setup.pool.fingerprint == report["data_fingerprint"]
    dev_fraction = default_dev_fraction(recipe, setup.info)
    assert dev_fraction == report["dev_fraction"]
    plan = kfold_plan(setup.pool, 5, recipe.seed)
    [(fold, (train, dev))] = [(fold, split) for fold, split in zip(plan, setup.pool.fold_splits(
        plan, dev_fraction, recipe.seed)) if fold.name == "fold-4"]
    assert record["documents"] == {"train": train, "dev": dev, "test": fold.test}
    (tmp_path / "folds").mkdir()
    shutil.copy(folder / "folds" / "fold-4.json", tmp_path / "folds")
    with caplog.at_level(logging.WARNING, logger="stanceclf.train.fold_runner"):
        assert setup.runner.finished("fold-4", train, dev, fold.test) is None
    assert "is a fold record of format 1" in caplog.text
