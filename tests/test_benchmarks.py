"""The benchmark scripts' own logic: their measuring helpers must be right and their child jobs must start."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: Fewer article resamples than a report's 2000: each one scores two systems through the library's report.
TEST_SAMPLES = 300


def _script(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import report.py, their neighbour
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_benchmarks_compare_macro_f1_matches_scikit_learn_and_skips_labels_without_positives():
    from sklearn.metrics import f1_score

    compare = _script("compare_models")
    rng = np.random.default_rng(0)
    truth, pred = rng.integers(0, 2, (200, 3)), rng.integers(0, 2, (200, 3))
    assert np.isclose(compare.macro_f1(truth, pred), f1_score(truth, pred, average="macro"))
    truth[:, 2] = 0  # a label with no positives is undefined, not zero
    assert np.isclose(compare.macro_f1(truth, pred), f1_score(truth[:, :2], pred[:, :2], average="macro"))


def test_benchmarks_compare_bootstrap_interval_brackets_the_observed_difference():
    compare = _script("compare_models")
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, (300, 3))
    docs = np.repeat([f"d{i}" for i in range(30)], 10)
    better = truth.copy()
    worse = np.where(rng.random(truth.shape) < 0.3, 1 - truth, truth)
    low, high = compare.bootstrap_difference(truth, worse, better, docs, samples=TEST_SAMPLES)
    observed = compare.macro_f1(truth, better) - compare.macro_f1(truth, worse)
    assert 0 < low <= observed <= high
    assert compare.bootstrap_difference(truth, better, better, docs, samples=TEST_SAMPLES) == (0.0, 0.0)


def test_benchmarks_inference_child_job_starts_and_scores(tiny_model_dir, tmp_path):
    """The child process imports the script by path: it once lost the import path of report.py."""
    inference = _script("inference")
    sentences = tmp_path / "sentences.json"
    sentences.write_text(json.dumps(["War is coming.", "The summit ended.", "Moscow wants a buffer zone."]))
    result = inference.run_child("classify", str(tiny_model_dir), str(sentences))
    assert len(result["scores"]) == 3 and result["seconds"] > 0 and result["peak_rss_mb"] > 0


def test_benchmarks_compare_bootstrap_resamples_whole_articles():
    """Errors packed into a few articles make the interval wider than the same errors spread over
    one-sentence articles; a sentence-level bootstrap would give the same interval for both."""
    compare = _script("compare_models")
    truth = np.tile([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], (75, 1))
    worse = truth.copy()
    worse[:60] = 1 - worse[:60]  # every error in the first 60 sentences
    clustered = np.repeat([f"d{i}" for i in range(30)], 10)
    spread = np.array([f"s{i}" for i in range(300)])
    low_c, high_c = compare.bootstrap_difference(truth, worse, truth, clustered, samples=TEST_SAMPLES)
    low_s, high_s = compare.bootstrap_difference(truth, worse, truth, spread, samples=TEST_SAMPLES)
    assert high_c - low_c > 1.5 * (high_s - low_s)


def _fold(folder: Path, name: str, test: list[str], macro: float, threat: float, teacher_macro=None) -> None:
    def report(macro_f1, threat_f1):
        return {"macro": {"f1": macro_f1}, "labels": {"prediction": {"f1": 0.5}, "threat_framing": {"f1": threat_f1}}}

    record = {"name": name, "documents": {"train": [], "dev": [], "test": test}, "test_report": report(macro, threat)}
    if teacher_macro is not None:
        record["teachers"] = [{"recipe": "big", "test_report": report(teacher_macro, None)}]
    (folder / "folds").mkdir(parents=True, exist_ok=True)
    (folder / "folds" / f"{name}.json").write_text(json.dumps(record))
    report = folder / "report.json"
    per_fold = json.loads(report.read_text())["per_fold"] if report.exists() else []
    names = sorted({fold["name"] for fold in per_fold} | {name})
    report.write_text(json.dumps({"per_fold": [{"name": n} for n in names]}))


def test_benchmarks_crossval_compare_pairs_folds_and_refuses_other_folds(tmp_path):
    import pytest

    compare = _script("crossval_compare")
    reference, student = tmp_path / "reference", tmp_path / "student"
    _fold(reference, "fold-1", ["a", "b"], 0.60, 0.50)
    _fold(reference, "fold-2", ["c"], 0.70, 0.55)
    _fold(reference, "fold-3", ["d"], 0.65, 0.52)
    _fold(student, "fold-1", ["a", "b"], 0.66, 0.58, teacher_macro=0.75)
    _fold(student, "fold-2", ["c"], 0.73, 0.60, teacher_macro=0.80)  # fold-3 not finished yet
    (student / "folds" / "fold-4.json").write_text("{}")  # a stale file the report does not list: not read
    result = compare.compare(compare.fold_records(reference), compare.fold_records(student), ("ref", "student"))
    assert [fold["fold"] for fold in result["folds"]] == ["fold-1", "fold-2"]
    mean, sd = result["differences"]["student"][0]
    assert mean == pytest.approx(0.045) and sd == pytest.approx(np.std([0.06, 0.03], ddof=1))
    assert result["differences"]["teacher big"][0][0] == pytest.approx(0.125)
    assert result["differences"]["teacher big"][2] == (None, None)  # the teacher's threat F1 is undefined
    text = compare.markdown(result, "cmd")
    assert "| fold-2 | 1 | - | teacher big | 0.800 |" in text and text.startswith("Command: `cmd`") and "| student | +0.045 ± 0.021 |" in text
    _fold(student, "fold-2", ["c", "e"], 0.73, 0.60)
    with pytest.raises(SystemExit, match="fold-2 tests other documents"):
        compare.compare(compare.fold_records(reference), compare.fold_records(student), ("ref", "student"))


def test_benchmarks_crossval_compare_narrows_a_grown_run_to_the_documents_both_test(tmp_path):
    import pytest

    from stanceclf.train.phases import evaluate_logits

    compare = _script("crossval_compare")
    rng = np.random.default_rng(5)
    counts = {"a": 3, "b": 2, "c": 4}  # sentences per document; "b" is new in the grown run
    rows = [doc for doc in sorted(counts) for _ in range(counts[doc])]
    labels = rng.integers(0, 2, (len(rows), 2))
    grown = _fold_record("fold-1", rng.normal(0, 2, labels.shape), labels, [0.5, 0.4])
    grown.update(documents={"test": ["a", "b", "c"]}, row_documents=rows)
    old_rows = [i for i, doc in enumerate(rows) if doc != "b"]
    reference = _fold_record("fold-1", rng.normal(0, 2, (len(old_rows), 2)), labels[old_rows], [0.6, 0.3])
    reference["documents"] = {"test": ["a", "c"]}  # an earlier record: no row_documents
    result = compare.compare({"fold-1": reference}, {"fold-1": grown}, ("old", "grown"))
    (fold,) = result["folds"]
    assert fold["narrowed"] and fold["test_documents"] == 2 and fold["test_sentences"] == 7
    expected = evaluate_logits(np.asarray(grown["logits"])[old_rows], labels[old_rows], ["l0", "l1"],
                               grown["temperatures"], grown["thresholds"])
    assert fold["models"]["grown"][0] == expected["macro"]["f1"]
    assert fold["models"]["old"][0] == reference["test_report"]["macro"]["f1"]  # all its documents are shared
    assert "| fold-1* | 2 | 7 | grown |" in compare.markdown(result, "cmd")

    changed = {**reference, "labels": (1 - labels[old_rows]).tolist()}
    with pytest.raises(SystemExit, match="other gold labels"):
        compare.compare({"fold-1": changed}, {"fold-1": grown}, ("old", "grown"))
    # Labels corrected since the reference ran: --gold second judges its predictions by the grown run's labels.
    relabelled = compare.compare({"fold-1": changed}, {"fold-1": grown}, ("old", "grown"), gold="second")
    judged = evaluate_logits(np.asarray(reference["logits"]), labels[old_rows], ["l0", "l1"],
                             reference["temperatures"], reference["thresholds"])
    assert relabelled["folds"][0]["models"]["old"][0] == judged["macro"]["f1"]
    assert relabelled["folds"][0]["models"]["grown"][0] == expected["macro"]["f1"]
    assert "both judged by the gold labels of the second run" in compare.markdown(relabelled, "cmd")
    assert compare.compare({"fold-1": changed}, {"fold-1": changed}, ("a", "b"), gold="second")["folds"][0][
        "models"]["a"][0] == evaluate_logits(np.asarray(reference["logits"]), 1 - labels[old_rows], ["l0", "l1"],
                                             reference["temperatures"], reference["thresholds"])["macro"]["f1"]
    split_otherwise = {**reference, "logits": reference["logits"][:-1], "labels": reference["labels"][:-1]}
    with pytest.raises(SystemExit, match="make 7 rows by the counts, it holds 6"):
        compare.compare({"fold-1": split_otherwise}, {"fold-1": grown}, ("old", "grown"))
    unnamed = {key: value for key, value in grown.items() if key != "row_documents"}
    with pytest.raises(SystemExit, match="neither record says which document each row is from"):
        compare.compare({"fold-1": reference}, {"fold-1": unnamed}, ("old", "grown"))


def test_benchmarks_crossval_by_source_pools_each_sources_rows_under_their_folds_thresholds(tmp_path):
    by_source = _script("crossval_by_source")
    annotations = tmp_path / "batch.jsonl"
    annotations.write_text(json.dumps({"doc_id": "cnn_1", "path": "../x/ukraine-war-news-2022.jsonl"}) + "\n")
    pooled = by_source.pool_sources([annotations])
    rng = np.random.default_rng(7)
    records = {}
    for name, docs in (("fold-1", {"EN_UA_1": 3, "cnn_1": 2}), ("fold-2", {"EN_UA_2": 2, "article9": 4, "x": 1})):
        rows = [doc for doc in sorted(docs) for _ in range(docs[doc])]
        labels = rng.integers(0, 2, (len(rows), 2))
        records[name] = _fold_record(name, rng.normal(0, 2, labels.shape), labels, [0.5, 0.3 if name == "fold-1" else 0.7])
        records[name].update(documents={"test": sorted(docs)}, row_documents=rows)
    result = by_source.by_source(records, Counter(), pooled)
    assert {s: (r["documents"], r["examples"]) for s, r in result.items()} == {
        "UA": (2, 5), "war news (pool)": (1, 2), "PTC": (1, 4), "other": (1, 1)}
    # UA's rows come from both folds, each decided under its own fold's thresholds.
    from stanceclf.train.fold_reports import pooled_report

    ua = [{**records["fold-1"], "logits": records["fold-1"]["logits"][:3], "labels": records["fold-1"]["labels"][:3]},
          {**records["fold-2"], "logits": records["fold-2"]["logits"][:2], "labels": records["fold-2"]["labels"][:2]}]
    assert records["fold-1"]["row_documents"][:3] == ["EN_UA_1"] * 3
    assert result["UA"]["macro"] == pooled_report(ua, ["l0", "l1"])["macro"]
    # An earlier run without row_documents is read through another run's row counts.
    earlier = {name: {k: v for k, v in record.items() if k != "row_documents"} for name, record in records.items()}
    counts = Counter(doc for record in records.values() for doc in record["row_documents"])
    assert by_source.by_source(earlier, counts, pooled)["UA"]["macro"] == result["UA"]["macro"]
    with pytest.raises(SystemExit, match="fold-1: no row count for 1 test document"):
        by_source.by_source(earlier, Counter({"EN_UA_1": 3}), pooled)
    assert "| run | UA | 2 | 5 |" in by_source.markdown({"run": result}, "cmd", "t")


def _fold_record(name: str, logits: np.ndarray, labels: np.ndarray, thresholds: list[float]) -> dict:
    from stanceclf.model.decision import decide, probabilities
    from stanceclf.model.metrics import multilabel_report

    temperatures = [1.0] * logits.shape[1]
    names = [f"l{j}" for j in range(logits.shape[1])]
    decided = decide(probabilities(logits, np.asarray(temperatures)), np.asarray(thresholds))
    report = multilabel_report(labels, decided, names)
    return {"name": name, "logits": logits.tolist(), "labels": labels.tolist(), "temperatures": temperatures,
            "thresholds": thresholds, "test_report": report}


def test_benchmarks_threshold_transfer_rescores_with_each_threshold_rule(tmp_path):
    from stanceclf.model.decision import probabilities
    from stanceclf.train.calibration import fit_thresholds

    transfer = _script("threshold_transfer")
    rng = np.random.default_rng(3)
    records = {}
    for name in ("fold-1", "fold-2", "fold-3"):
        labels = rng.integers(0, 2, (120, 2))
        logits = np.where(labels == 1, 1.0, -1.0) * 1.5 + rng.normal(0, 1.5, labels.shape)
        records[name] = _fold_record(name, logits, labels, [0.9, 0.1])  # poor "dev" thresholds
    for name, record in records.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(record))

    labels, rows = transfer.transfer_rows(transfer.read_folds(tmp_path))
    assert labels == ["l0", "l1"]
    for name, record in records.items():
        assert rows[name]["dev"]["macro"]["f1"] == record["test_report"]["macro"]["f1"]
        # the oracle fits this fold's own test: no other rule scores higher on it
        assert all(rows[name]["test (oracle)"]["macro"]["f1"] >= rows[name][rule]["macro"]["f1"]
                   for rule in ("dev", "other folds", "0.5"))
    # "other folds" pools the two other folds' test predictions, and nothing of its own
    others = [records["fold-2"], records["fold-3"]]
    pooled = fit_thresholds(np.concatenate([probabilities(np.asarray(r["logits"]), np.ones(2)) for r in others]),
                            np.concatenate([np.asarray(r["labels"]) for r in others]))
    expected = transfer.score(probabilities(np.asarray(records["fold-1"]["logits"]), np.ones(2)),
                              np.asarray(records["fold-1"]["labels"]), pooled, labels)
    assert rows["fold-1"]["other folds"]["macro"]["f1"] == expected["macro"]["f1"]
    assert rows["fold-1"]["other folds"]["macro"]["f1"] > rows["fold-1"]["dev"]["macro"]["f1"]


def test_benchmarks_threshold_transfer_refuses_a_record_its_thresholds_do_not_reproduce(tmp_path):
    import pytest

    transfer = _script("threshold_transfer")
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    logits = np.array([[2.0, -2.0], [-2.0, 2.0], [2.0, 2.0], [-2.0, -2.0]])
    record = _fold_record("fold-1", logits, labels, [0.5, 0.5])
    record["test_report"]["macro"]["f1"] = 0.25
    (tmp_path / "fold-1.json").write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="fold-1: its dev thresholds give macro F1"):
        transfer.transfer_rows(transfer.read_folds(tmp_path))
