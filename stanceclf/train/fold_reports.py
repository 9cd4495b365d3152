"""What fold records add up to: mean ± sd over folds, the pooled out-of-fold report, and the Markdown of a
cross-validation (``report.json`` and ``report.md``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stanceclf.model.decision import decide, probabilities
from stanceclf.model.metrics import expected_calibration_error, format_metric, format_report, multilabel_report

#: The figures averaged over folds, per label and macro-averaged.
METRICS = ("f1", "precision", "recall", "pr_auc")


def mean_sd(values) -> dict:
    """Mean and sample standard deviation over folds, leaving out folds where the figure is undefined
    (``None``: PR-AUC of a label with no positive in the fold)."""
    present = [float(v) for v in values if v is not None]
    return {"mean": float(np.mean(present)) if present else None,
            "sd": float(np.std(present, ddof=1)) if len(present) > 1 else None, "folds": len(present)}


def summarise(records: list[dict], labels: list[str]) -> dict:
    """Mean and sd over folds of each label's and the macro average's F1, precision, recall and PR-AUC."""
    reports = [record["test_report"] for record in records]
    return {
        "labels": {label: {m: mean_sd(r["labels"][label].get(m) for r in reports) for m in METRICS}
                   for label in labels},
        "macro": {m: mean_sd(r["macro"].get(m) for r in reports) for m in METRICS},
        "micro": {"f1": mean_sd(r["micro"]["f1"] for r in reports)},
    }


def pooled_report(records: list[dict], labels: list[str]) -> dict:
    """The out-of-fold predictions of every fold together, each scored with its own fold's
    temperatures and thresholds: one report over all test sentences."""
    probs, decided, truth = [], [], []
    for record in records:
        fold_probs = probabilities(np.asarray(record["logits"]).reshape(-1, len(labels)), record["temperatures"])
        probs.append(fold_probs)
        decided.append(decide(fold_probs, record["thresholds"]))
        truth.append(np.asarray(record["labels"], dtype=int).reshape(-1, len(labels)))
    probs, decided, truth = np.concatenate(probs), np.concatenate(decided), np.concatenate(truth)
    report = multilabel_report(truth, decided, labels, probs)
    report["ece"] = expected_calibration_error(truth, probs)
    return report


def fold_summary(record: dict) -> dict:
    """A fold's line in the report: its figures and document counts, without its logits."""
    return {key: record[key] for key in ("name", "sentences", "epochs_run", "wall_seconds", "temperatures",
                                         "thresholds", "test_report")} | {
        "documents": {split: len(docs) for split, docs in record["documents"].items()},
        "test_documents": record["documents"]["test"]}


def format_mean_sd(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.3f}" + ("" if stats["sd"] is None else f" ± {stats['sd']:.3f}")


def mean_sd_table(summary: dict, labels: list[str]) -> list[str]:
    """Markdown rows: one per label and the macro average, each figure as mean ± sd over folds."""
    lines = ["| label | F1 | precision | recall | PR-AUC |", "|---|---:|---:|---:|---:|"]
    rows = [(label, summary["labels"][label]) for label in labels] + [("*macro*", summary["macro"])]
    lines += [f"| {name} | " + " | ".join(format_mean_sd(row[m]) for m in METRICS) + " |" for name, row in rows]
    lines.append(f"| *micro* | {format_mean_sd(summary['micro']['f1'])} | | | |")
    return lines


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """``report.json`` and ``report.md`` of :func:`stanceclf.train.crossval.cross_validate`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = report["labels"]
    scheme = ("leave-one-source-out" if report["scheme"] == "leave-one-source-out"
              else f"{report['folds']}-fold, grouped by document")
    finished = report.get("folds_finished") or [fold["name"] for fold in report["per_fold"]]
    partial = len(finished) < report["folds"]
    lines = [f"# Cross-validation of recipe `{report['recipe']}`: {scheme}", ""]
    if partial:
        lines += [f"**Partial: {len(finished)} of {report['folds']} folds finished ({', '.join(finished)}).** "
                  "The figures below cover those folds only; rerun the same command (without `--only`, or with "
                  "the other folds) to add the rest.", ""]
    lines += [f"Data: {report['documents']} documents, {report['sentences']} sentences "
              f"(`{report['data_fingerprint']}`); seed {report['seed']}. Each fold's documents are its test set; "
              f"the other documents are split into train and dev (dev fraction {report['dev_fraction']:.2f}, "
              "grouped by document, balanced on each label's positives); dev serves early stopping and the fold's "
              "temperatures and thresholds."]
    if report["scheme"] == "leave-one-source-out":
        sources = ", ".join(f"{name} = {patterns}" for name, patterns in report["sources"].items())
        only = report["training_only_documents"]
        lines += ["", f"Sources (document-id patterns): {sources}. {len(only)} document(s) belong to no source "
                  "and are never tested, only trained on (in every fold's train or dev)"
                  + (f": {', '.join(only)}." if only else ".")]
    counted = len(finished) if partial else report["folds"]
    lines += ["", f"## Mean ± sd over {counted} fold{'' if counted == 1 else 's'} (sample sd)", "",
              *mean_sd_table(report["mean_sd"], labels), "",
              "## Pooled out-of-fold predictions", "",
              "Every fold's test sentences together, each scored by its own fold's model and thresholds "
              f"(ECE {report['pooled']['ece']:.4f}).", "", format_report(report["pooled"]), "",
              "## Per fold", "",
              "| fold | train docs | dev docs | test docs | test sentences | macro F1 | "
              + " | ".join(f"{label} F1" for label in labels) + " |",
              "|---|---:|---:|---:|---:|---:|" + "---:|" * len(labels)]
    for fold in report["per_fold"]:
        docs, test = fold["documents"], fold["test_report"]
        lines.append(f"| {fold['name']} | {docs['train']} | {docs['dev']} | {docs['test']} | "
                     f"{fold['sentences']['test']} | {format_metric(test['macro']['f1'])} | "
                     + " | ".join(format_metric(test["labels"][label]["f1"]) for label in labels) + " |")
    for teacher in report.get("teachers", []):
        lines += ["", f"## Teacher `{teacher['recipe']}`, trained in each fold on the student's training documents",
                  "", "Its own test figures on the same folds (mean ± sd), for comparison with the student's.", "",
                  *mean_sd_table(teacher["mean_sd"], labels), "",
                  "Per-fold macro F1: " + ", ".join(format_metric(f1) for f1 in teacher["per_fold_macro_f1"]) + "."]
    paths = [out_dir / "report.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths
