"""Per-label temperature scaling and decision thresholds, both fitted on dev.

Temperature scaling divides each label's logit by a fitted ``T > 0`` so that
the sigmoid gives calibrated probabilities (it cannot change the ranking).
The threshold of each label is then the calibrated probability that maximises
that label's F1 on dev.
"""

from __future__ import annotations

import numpy as np

from stanceclf.model.decision import SCORE_DECIMALS, probabilities, reported_scores


def fit_temperatures(logits: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """One temperature per label minimising the binary log loss on ``(logits, y_true)``."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.float64)
    temperatures = np.ones(logits.shape[1])
    for j in range(logits.shape[1]):
        z, y = logits[:, j], y_true[:, j]
        if len(z) == 0 or y.min() == y.max():
            continue  # nothing to calibrate against: keep T = 1

        def nll(log_t: float) -> float:
            s = z / np.exp(log_t)
            # log(1 + e^s) - y*s, written to stay finite for large |s|
            return float(np.mean(np.logaddexp(0.0, s) - y * s))

        result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        temperatures[j] = float(np.exp(result.x))
    return temperatures


def fit_thresholds(probs: np.ndarray, y_true: np.ndarray, *, default: float = 0.5) -> np.ndarray:
    """Per-label threshold maximising F1 on dev; ``default`` for labels without positives.

    Thresholds are cut between the scores :func:`~stanceclf.model.decision.decide` compares (the reported,
    rounded ones), so the F1 a threshold was chosen for is the F1 the decision rule gives."""
    probs = reported_scores(probs)
    y_true = np.asarray(y_true).astype(int)
    thresholds = np.full(probs.shape[1], default)
    for j in range(probs.shape[1]):
        p, y = probs[:, j], y_true[:, j]
        if y.sum() == 0:
            continue
        order = np.argsort(-p)
        p_sorted, y_sorted = p[order], y[order]
        tp = np.cumsum(y_sorted)
        predicted = np.arange(1, len(p) + 1)
        f1 = 2 * tp / (predicted + y.sum())
        # Only cut between distinct scores; ties fall on the same side.
        distinct = np.r_[p_sorted[1:] != p_sorted[:-1], True]
        best = int(np.argmax(np.where(distinct, f1, -1)))
        below = p_sorted[best + 1] if best + 1 < len(p_sorted) else 0.0
        # Halfway between two reported scores: one decimal more than they have, and no float noise
        # (0.5750015, not 0.5750014999999999) in the manifest, the card and `stanceclf info`.
        thresholds[j] = round(float((p_sorted[best] + below) / 2), SCORE_DECIMALS + 1)
    return thresholds


def calibrate(logits: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Temperatures, then thresholds on the calibrated probabilities."""
    temperatures = fit_temperatures(logits, y_true)
    thresholds = fit_thresholds(probabilities(logits, temperatures), y_true)
    return temperatures, thresholds
