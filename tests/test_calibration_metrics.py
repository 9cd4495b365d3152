"""Temperature scaling, F1 thresholds, calibration error and the multi-label report, on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from stanceclf.train.calibration import calibrate, fit_temperatures, fit_thresholds
from stanceclf.model.metrics import expected_calibration_error, format_report, multilabel_report
from stanceclf.model.decision import probabilities


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_logits(temperatures, n: int = 20_000, seed: int = 0):
    """Logits z ~ N(0, 3^2) per label and labels y ~ Bernoulli(sigmoid(z / T_true))."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, size=(n, len(temperatures)))
    y = (rng.random(z.shape) < sigmoid(z / np.asarray(temperatures))).astype(int)
    return z, y


# --- temperatures ---------------------------------------------------------------------------------


def test_calibration_fit_temperatures_recovers_known_temperature():
    true = np.array([2.0, 0.5, 1.0])
    z, y = synthetic_logits(true)
    fitted = fit_temperatures(z, y)
    assert fitted.shape == (3,)
    assert np.all(np.abs(fitted / true - 1) < 0.15), fitted


def test_calibration_fit_temperatures_keeps_one_without_both_classes():
    z = np.array([[2.0, -1.0], [1.0, 3.0], [-0.5, 0.5]])
    y = np.array([[1, 0], [1, 1], [1, 0]])  # the first label has no negative: nothing to fit
    fitted = fit_temperatures(z, y)
    assert fitted[0] == 1.0
    assert fitted[1] != 1.0


def test_calibration_fit_temperatures_lowers_log_loss():
    z, y = synthetic_logits([2.5], n=5000, seed=1)

    def log_loss(t):
        p = np.clip(sigmoid(z / t), 1e-12, 1 - 1e-12)
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

    fitted = fit_temperatures(z, y)
    assert log_loss(fitted) < log_loss(np.ones(1))
    assert log_loss(fitted) <= min(log_loss(fitted * 0.9), log_loss(fitted * 1.1))


# --- thresholds -----------------------------------------------------------------------------------


def test_calibration_fit_thresholds_maximises_f1_on_hand_example():
    # Sorted by score, labels 1 1 0 1 0 0 (3 positives). F1 when the top k are called positive:
    # k=1: 2/4=0.50, k=2: 4/5=0.80, k=3: 4/6=0.67, k=4: 6/7=0.86, k=5: 6/8=0.75, k=6: 6/9=0.67.
    # Best k=4: the cut lies midway between the 4th and 5th scores, (0.4 + 0.3) / 2.
    probs = np.array([[0.9], [0.3], [0.7], [0.4], [0.8], [0.1]])
    y = np.array([[1], [0], [0], [1], [1], [0]])
    thresholds = fit_thresholds(probs, y)
    assert thresholds.tolist() == [(0.4 + 0.3) / 2]
    predicted = (probs >= thresholds).astype(int)
    assert predicted[:, 0].tolist() == [1, 0, 1, 1, 1, 0]


def test_calibration_fit_thresholds_never_cuts_between_tied_scores():
    # Scores 0.9, 0.6, 0.6, 0.1 with labels 1, {1, 0}, 0. A cut between the two 0.6 would give F1 = 1,
    # but no threshold can separate them. Possible cuts: top 1 (F1 2/3) or top 3 (F1 4/5): the cut is 0.35.
    for order in ([0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0]):
        probs = np.array([0.9, 0.6, 0.6, 0.1])[order][:, None]
        y = np.array([1, 1, 0, 0])[order][:, None]
        assert fit_thresholds(probs, y).tolist() == [(0.6 + 0.1) / 2]


def test_calibration_fit_thresholds_per_label_and_default_without_positives():
    probs = np.array([[0.9, 0.2, 0.7], [0.2, 0.8, 0.6], [0.6, 0.3, 0.1]])
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    thresholds = fit_thresholds(probs, y, default=0.42)
    assert thresholds.tolist() == [(0.9 + 0.6) / 2, (0.8 + 0.3) / 2, 0.42]


def test_calibration_calibrate_chains_temperatures_and_thresholds():
    z, y = synthetic_logits([2.0, 0.5], n=4000, seed=2)
    temperatures, thresholds = calibrate(z, y)
    assert np.allclose(temperatures, fit_temperatures(z, y))
    assert np.allclose(thresholds, fit_thresholds(probabilities(z, temperatures), y))
    assert np.all((thresholds > 0) & (thresholds < 1))


# --- expected calibration error -------------------------------------------------------------------


def test_metrics_ece_near_zero_when_calibrated_and_larger_when_overconfident():
    rng = np.random.default_rng(0)
    p = rng.random(100_000)
    y = (rng.random(p.shape) < p).astype(int)
    calibrated = expected_calibration_error(y, p)
    # Sampling noise only: ~6,700 examples per bin, standard error of a bin's mean label <= 0.006.
    assert calibrated < 0.015
    logit = np.log(p / (1 - p))
    overconfident = sigmoid(3 * logit)  # same ranking, probabilities pushed towards 0 and 1
    assert expected_calibration_error(y, overconfident) > 0.1
    assert expected_calibration_error(y, sigmoid(logit / 3)) > 0.1  # underconfident too


def test_metrics_ece_hand_example():
    # All probabilities 0.8, half the labels positive: |0.8 - 0.5| = 0.3.
    assert expected_calibration_error(np.array([1, 0, 1, 0]), np.full(4, 0.8)) == pytest.approx(0.3)
    # Two bins: {0.1, 0.1} with labels {0, 1} -> weight 1/2 * |0.1 - 0.5|; {0.9, 0.9} with {1, 1} -> 1/2 * 0.1.
    y = np.array([[0, 1], [1, 1]])
    p = np.array([[0.1, 0.1], [0.9, 0.9]])
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(0.25)
    assert expected_calibration_error(np.array([]), np.array([])) == 0.0


# --- multi-label report ---------------------------------------------------------------------------


def test_metrics_multilabel_report_hand_computed():
    y_true = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    y_pred = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]])
    scores = np.array([[0.9, 0.7, 0.2], [0.4, 0.8, 0.1], [0.6, 0.3, 0.3], [0.1, 0.2, 0.9]])
    report = multilabel_report(y_true, y_pred, ["a", "b", "c"], y_score=scores)
    a, b, c = (report["labels"][k] for k in "abc")
    # a: tp 1, fp 0, fn 1.  b: tp 1, fp 1, fn 1.  c: tp 0, fp 1, no positives.
    assert a == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2, "predicted": 1,
                               # ranking 0.9(+) 0.6(-) 0.4(+) 0.1(-): AP = 0.5 * 1 + 0.5 * 2/3
                               "pr_auc": 0.5 + 1 / 3})
    assert b == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "predicted": 2,
                               # ranking 0.8(+) 0.7(-) 0.3(+) 0.2(-): AP = 0.5 * 1 + 0.5 * 2/3
                               "pr_auc": 0.5 + 1 / 3})
    # c has no positives: recall and F1 are undefined, not 0; its one prediction is wrong (precision 0).
    assert c == {"precision": 0.0, "recall": None, "f1": None, "support": 0, "predicted": 1, "pr_auc": None}
    # micro: tp 2, fp 2, fn 2.
    assert report["micro"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    # macro: over a and b, the labels with positives (c's undefined F1 would otherwise count as 0).
    assert report["macro"] == pytest.approx({"precision": 0.75, "recall": 0.5, "f1": (2 / 3 + 0.5) / 2,
                                             "pr_auc": 0.5 + 1 / 3})
    assert report["macro_left_out"] == ["c"]
    assert report["examples"] == 4


def test_metrics_multilabel_report_without_scores_and_formatted():
    y = np.array([[1, 0], [0, 1]])
    report = multilabel_report(y, y, ["x", "y"])
    assert report["micro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert all("pr_auc" not in row for row in report["labels"].values())
    table = format_report(report, title="dev")
    assert table.splitlines()[0] == "**dev**"
    assert "| x | 1.000 | 1.000 | 1.000 | 1 |" in table
    assert "PR-AUC" not in table


def test_metrics_labels_without_positives_are_undefined_and_named_in_the_table():
    y_true = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]])
    y_pred = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]])
    report = multilabel_report(y_true, y_pred, ["seen", "never", "unpredicted"])
    assert report["labels"]["never"] == {"precision": None, "recall": None, "f1": None, "support": 0, "predicted": 0}
    assert report["macro"]["f1"] == 1.0, "a perfect model on the labels that occur is not averaged down to 0.333"
    assert report["macro_left_out"] == ["never", "unpredicted"]
    table = format_report(report)
    assert "| never | - | - | - | 0 |" in table and "| *macro* | 1.000 | 1.000 | 1.000 | |" in table
    assert "No positives in this split for never, unpredicted" in table and "leave these labels out" in table
    none = multilabel_report(np.zeros((2, 2), dtype=int), np.zeros((2, 2), dtype=int), ["x", "y"])
    assert none["macro"] == {"precision": None, "recall": None, "f1": None}
    assert "| *macro* | - | - | - | |" in format_report(none)


def test_metrics_single_label_reports_the_positive_class():
    """A one-label schema (e.g. PTC propaganda) must not fall into scikit-learn's binary
    averaging, where 'macro' would mix in the negative class."""
    from stanceclf.model.metrics import multilabel_report

    y_true = np.array([[1], [1], [0], [0], [0], [0]])
    y_pred = np.array([[1], [0], [1], [0], [0], [0]])
    report = multilabel_report(y_true, y_pred, ["propaganda"])
    row = report["labels"]["propaganda"]
    assert (row["precision"], row["recall"], row["f1"], row["support"]) == (0.5, 0.5, 0.5, 2)
    assert report["macro"]["f1"] == 0.5 and report["micro"]["f1"] == 0.5


def test_calibration_thresholds_cut_between_reported_scores():
    """Two dev scores that round to the same reported score cannot be separated by a threshold."""
    from stanceclf.model.decision import decide

    probs = np.array([[0.5000004], [0.5000001], [0.2]], dtype=np.float32)
    y = np.array([[1], [0], [0]])
    [threshold] = fit_thresholds(probs, y)
    decided = decide(probs, np.array([threshold]))[:, 0]
    f1 = 2 * (decided & (y[:, 0] == 1)).sum() / (decided.sum() + y.sum())
    assert decided[0] and f1 == pytest.approx(2 / 3)  # both 0.5 scores are labelled: the best the rule allows


def test_calibration_thresholds_are_written_without_float_noise():
    """Halfway between two 6-decimal scores has 7 decimals: 0.5750015, never 0.5750014999999999."""
    probs = np.array([[0.575002], [0.575001], [0.2]])
    [threshold] = fit_thresholds(probs, np.array([[1], [0], [0]]))
    assert repr(float(threshold)) == "0.5750015"
