"""Multi-label metrics, the report format the manifest records, and its Markdown table (scikit-learn; nothing fetched)."""

from __future__ import annotations

import numpy as np


def multilabel_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str],
                      y_score: np.ndarray | None = None) -> dict:
    """Per-label precision, recall, F1, support (and PR-AUC when scores are given),
    plus micro and macro averages.

    Each label is scored as its own binary problem, positive class 1. (Handing a
    one-column matrix to scikit-learn's multi-label averaging would make it a binary
    target whose "macro" average mixes in the negative class.)
    """
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support

    y_true = np.asarray(y_true).astype(int).reshape(len(y_true), len(labels))
    y_pred = np.asarray(y_pred).astype(int).reshape(len(y_pred), len(labels))

    def binary(truth, predicted) -> tuple[float, float, float]:
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, average="binary", pos_label=1,
                                                     zero_division=0)
        return float(p), float(r), float(f)

    report: dict = {"labels": {}}
    for i, label in enumerate(labels):
        precision, recall, f1 = binary(y_true[:, i], y_pred[:, i]) if len(y_true) else (0.0, 0.0, 0.0)
        row = {"precision": precision, "recall": recall, "f1": f1,
               "support": int(y_true[:, i].sum()), "predicted": int(y_pred[:, i].sum())}
        if y_score is not None:
            row["pr_auc"] = (float(average_precision_score(y_true[:, i], np.asarray(y_score)[:, i]))
                             if y_true[:, i].any() else None)
        report["labels"][label] = row
    rows = list(report["labels"].values())
    micro = binary(y_true.ravel(), y_pred.ravel()) if len(y_true) else (0.0, 0.0, 0.0)
    report["micro"] = dict(zip(("precision", "recall", "f1"), micro))
    report["macro"] = {key: float(np.mean([row[key] for row in rows])) for key in ("precision", "recall", "f1")}
    if y_score is not None:
        aucs = [row["pr_auc"] for row in rows if row["pr_auc"] is not None]
        report["macro"]["pr_auc"] = float(np.mean(aucs)) if aucs else None
    report["examples"] = int(len(y_true))
    return report


def format_report(report: dict, title: str = "") -> str:
    """A Markdown table of :func:`multilabel_report`."""
    has_auc = any("pr_auc" in row for row in report["labels"].values())
    header = "| label | precision | recall | F1 | support |" + (" PR-AUC |" if has_auc else "")
    lines = ([f"**{title}**", ""] if title else []) + [header, "|---|---:|---:|---:|---:|" + ("---:|" if has_auc else "")]

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    for label, row in report["labels"].items():
        line = f"| {label} | {fmt(row['precision'])} | {fmt(row['recall'])} | {fmt(row['f1'])} | {row['support']} |"
        lines.append(line + (f" {fmt(row.get('pr_auc'))} |" if has_auc else ""))
    for average in ("micro", "macro"):
        row = report[average]
        line = f"| *{average}* | {fmt(row['precision'])} | {fmt(row['recall'])} | {fmt(row['f1'])} | |"
        lines.append(line + (f" {fmt(row.get('pr_auc'))} |" if has_auc else ""))
    return "\n".join(lines)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """ECE over all (example, label) probabilities, equal-width bins."""
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(probs, dtype=float).ravel()
    if len(p) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(error)
