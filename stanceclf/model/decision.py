"""The one decision rule: calibrated probabilities, reported scores, and which labels a unit gets.

Prediction, corpus scoring, evaluation and training all decide through :func:`decide`,
so a score exactly at a threshold gets the same decision everywhere. A label is given
when its *reported* score (the calibrated probability rounded to :data:`SCORE_DECIMALS`
places, as every output shows it) reaches the label's threshold: a user who compares a
printed score with the printed threshold always agrees with the label.

Pure numpy: nothing here loads a model.
"""

from __future__ import annotations

import numpy as np

#: Decimal places of every reported score (API, CLI, corpus rows).
SCORE_DECIMALS = 6


def probabilities(logits: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """Sigmoid of temperature-scaled logits, computed stably: ``(n, L)`` float32."""
    scaled = np.asarray(logits, dtype=np.float64) / np.asarray(temperatures, dtype=np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * scaled))).astype(np.float32)


def reported_scores(probs: np.ndarray) -> np.ndarray:
    """Probabilities as they are reported: float64, rounded to :data:`SCORE_DECIMALS` places."""
    return np.round(np.asarray(probs, dtype=np.float64), SCORE_DECIMALS)


def decide(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``bool[n, L]``: label ``j`` is given to unit ``i`` when its reported score reaches ``thresholds[j]``."""
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(1, -1)
    return reported_scores(probs).reshape(-1, thresholds.shape[1]) >= thresholds
