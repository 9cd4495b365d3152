"""Multi-label metrics, the report format the manifest records, and its Markdown table (scikit-learn; nothing fetched)."""

from __future__ import annotations

import numpy as np


def multilabel_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str],
                      y_score: np.ndarray | None = None) -> dict:
    """Per-label precision, recall, F1, support (and PR-AUC when scores are given),
    plus micro and macro averages.

    Each label is scored as its own binary problem, positive class 1. (Handing a
    one-column matrix to scikit-learn's multi-label averaging would make it a binary
    target whose "macro" average mixes in the negative class.) A label with no positives
    in the data has no recall and no F1 (None, not 0): it is left out of the macro
    averages, and ``report["macro_left_out"]`` lists it. Its precision is still given
    when it was predicted (every prediction of it is wrong).
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
        support, predicted = int(y_true[:, i].sum()), int(y_pred[:, i].sum())
        precision, recall, f1 = binary(y_true[:, i], y_pred[:, i]) if len(y_true) else (0.0, 0.0, 0.0)
        if not support:
            precision, recall, f1 = (precision if predicted else None), None, None
        row = {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted}
        if y_score is not None:
            row["pr_auc"] = float(average_precision_score(y_true[:, i], np.asarray(y_score)[:, i])) if support else None
        report["labels"][label] = row
    defined = [row for row in report["labels"].values() if row["support"]]
    micro = binary(y_true.ravel(), y_pred.ravel()) if len(y_true) else (0.0, 0.0, 0.0)
    report["micro"] = dict(zip(("precision", "recall", "f1"), micro))
    report["macro"] = {key: float(np.mean([row[key] for row in defined])) if defined else None
                       for key in ("precision", "recall", "f1", *(("pr_auc",) if y_score is not None else ()))}
    report["macro_left_out"] = [label for label, row in report["labels"].items() if not row["support"]]
    report["examples"] = int(len(y_true))
    return report


def format_metric(value: float | None) -> str:
    """A metric as every table shows it: three decimals, or "-" where it is undefined."""
    return "-" if value is None else f"{value:.3f}"


def format_report(report: dict, title: str = "") -> str:
    """A Markdown table of :func:`multilabel_report`, with a note naming labels left out of the macro average."""
    has_auc = any("pr_auc" in row for row in report["labels"].values())
    header = "| label | precision | recall | F1 | support |" + (" PR-AUC |" if has_auc else "")
    lines = ([f"**{title}**", ""] if title else []) + [header, "|---|---:|---:|---:|---:|" + ("---:|" if has_auc else "")]
    fmt = format_metric
    for label, row in report["labels"].items():
        line = f"| {label} | {fmt(row['precision'])} | {fmt(row['recall'])} | {fmt(row['f1'])} | {row['support']} |"
        lines.append(line + (f" {fmt(row.get('pr_auc'))} |" if has_auc else ""))
    for average in ("micro", "macro"):
        row = report[average]
        line = f"| *{average}* | {fmt(row['precision'])} | {fmt(row['recall'])} | {fmt(row['f1'])} | |"
        lines.append(line + (f" {fmt(row.get('pr_auc'))} |" if has_auc else ""))
    left_out = report.get("macro_left_out") or []
    if left_out:
        lines += ["", f"No positives in this split for {', '.join(left_out)}: recall and F1 are undefined (-) "
                  "and the macro averages leave these labels out."]
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
