"""The benchmark scripts' own logic: their measuring helpers must be right and their child jobs must start."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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
    low, high = compare.bootstrap_difference(truth, worse, better, docs)
    observed = compare.macro_f1(truth, better) - compare.macro_f1(truth, worse)
    assert 0 < low <= observed <= high
    assert compare.bootstrap_difference(truth, better, better, docs) == (0.0, 0.0)


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
    low_c, high_c = compare.bootstrap_difference(truth, worse, truth, clustered)
    low_s, high_s = compare.bootstrap_difference(truth, worse, truth, spread)
    assert high_c - low_c > 1.5 * (high_s - low_s)
