"""Evaluating a model directory on a built dataset: table, JSON report and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stanceclf.errors import EvaluationError
from stanceclf.model.decision import decide
from stanceclf.model.manifest import ModelManifest
from stanceclf.model.metrics import expected_calibration_error, format_report, multilabel_report

if TYPE_CHECKING:
    import datasets


def evaluate_model(model, dataset_split, *, batch_size: int = 64,
                   allow_training_documents: bool = False) -> tuple[dict, np.ndarray, np.ndarray]:
    """Score one split of a built dataset: ``(report, y_true, probabilities)``.

    The dataset's labels must be the model's labels, in the same order. A split that
    holds documents of the model's training split is refused (its scores would be
    inflated) unless ``allow_training_documents``; documents of the model's dev split
    (which tuned its thresholds) are counted in the report.
    """
    if len(dataset_split) == 0:
        raise EvaluationError("the split to evaluate is empty")
    seen = _documents_seen_in_training(model, set(dataset_split["doc_id"]))
    if seen["train"] and not allow_training_documents:
        examples = ", ".join(repr(d) for d in seen["train"][:3])
        raise EvaluationError(
            f"{len(seen['train'])} of the split's {len(set(dataset_split['doc_id']))} documents were in the model's "
            f"training split ({examples}{', ...' if len(seen['train']) > 3 else ''}), so its scores would be "
            "inflated. Build the dataset with the split the model was trained on (the ratios and seed of its "
            "recipe), or pass --allow-training-documents")
    probs, truncated = model.proba_and_truncation(list(dataset_split["text"]), batch_size=batch_size,
                                                  contexts=model.example_contexts(dataset_split))
    y_true = np.array(dataset_split["labels"], dtype=int).reshape(len(probs), -1)
    report = multilabel_report(y_true, decide(probs, model.threshold_vector), model.labels, probs)
    report["ece"] = expected_calibration_error(y_true, probs)
    report["truncated_sentences"] = int(sum(truncated))
    report["documents_seen_in_training"] = {name: len(ids) for name, ids in seen.items()}
    return report, y_true, probs


def evaluate_on_dataset(model, dataset_dir: str | Path, *, split: str = "test", out: str | Path | None = None,
                        batch_size: int = 64, allow_training_documents: bool = False) -> tuple[dict, list[Path]]:
    """Evaluate a loaded model on one split of a built dataset folder and write the report
    (``report.json``, ``report.md``, plots) to ``out``, by default ``./eval-<model>-<split>`` in the
    working directory (never inside the model directory). Returns ``(report, written files)``."""
    from stanceclf.data.dataset import load_built_dataset

    data, info = load_built_dataset(dataset_dir)
    if split not in data:
        raise EvaluationError(f"no split {split!r}; the dataset has {list(data)}", where=str(dataset_dir))
    dataset_labels = [label["name"] for label in info["schema"]["labels"]]
    if dataset_labels != model.labels:
        raise EvaluationError(f"the dataset's labels {dataset_labels} are not the model's {model.labels}, in "
                              "that order", where=str(dataset_dir))
    report, y_true, probs = evaluate_model(model, data[split], batch_size=batch_size,
                                           allow_training_documents=allow_training_documents)
    name = model.path.name if model.path is not None else "model"
    out = Path(out) if out is not None else Path.cwd() / f"eval-{name}-{split}"
    return report, write_evaluation(report, y_true, probs, model.labels, model.threshold_vector, out)


def _documents_seen_in_training(model, doc_ids: set[str]) -> dict[str, list[str]]:
    seen = model.manifest.documents_seen() or {"train": set(), "dev": set()}
    return {name: sorted(doc_ids & ids) for name, ids in seen.items()}


def rows_never_seen(model_dir: str | Path, dataset_split: datasets.Dataset) -> datasets.Dataset:
    """The rows of ``dataset_split`` whose documents the model in ``model_dir`` never saw: in neither the
    training nor the dev split its manifest records (the dev split tuned its thresholds and temperatures).

    This, not the test split of its recipe rebuilt today, is the sample to measure a trained model on: the
    split balances each label's positives, so a corrected label can move documents between splits, and a
    rebuilt "test" split then holds articles the model trained on. A distilled student's manifest lists its own
    documents, not its teachers': articles only a teacher trained on count as unseen."""
    recorded = ModelManifest.read(Path(model_dir)).documents_seen()
    if recorded is None:
        raise EvaluationError("the model's manifest does not list the documents it trained on, so the ones it "
                              "never saw cannot be told apart", where=str(model_dir))
    seen = recorded["train"] | recorded["dev"]
    unseen = [i for i, doc in enumerate(dataset_split["doc_id"]) if doc not in seen]
    if not unseen:
        documents = len(set(dataset_split["doc_id"]))
        raise EvaluationError(f"the model trained or tuned on every one of the split's {documents} documents: "
                              "nothing is left to measure it on", where=str(model_dir))
    return dataset_split.select(unseen)


def write_evaluation(report: dict, y_true: np.ndarray, probs: np.ndarray, labels: list[str], thresholds: np.ndarray,
                     out_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md``, a PR curve per label and a bar chart of errors per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.json", out_dir / "report.md"]
    written[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    written[1].write_text(format_report(report) + "\n", encoding="utf-8")
    for j, label in enumerate(labels):
        if not y_true[:, j].any():
            continue
        precision, recall, _ = precision_recall_curve(y_true[:, j], probs[:, j])
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.plot(recall, precision)
        chosen = report["labels"][label]
        ax.scatter([chosen["recall"]], [chosen["precision"]], color="red", zorder=3,
                   label=f"threshold {thresholds[j]:.2f}")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
               title=f"{label} (PR-AUC {chosen.get('pr_auc') or 0:.3f})")
        ax.legend(loc="lower left")
        path = out_dir / f"pr-{label}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    predicted = decide(probs, thresholds)
    false_pos = [int((predicted[:, j] & (y_true[:, j] == 0)).sum()) for j in range(len(labels))]
    false_neg = [int((~predicted[:, j] & (y_true[:, j] == 1)).sum()) for j in range(len(labels))]
    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2, 4))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, false_pos, 0.4, label="false positives")
    ax.bar(x + 0.2, false_neg, 0.4, label="false negatives")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set(ylabel="sentences", title="errors per label")
    ax.legend()
    fig.tight_layout()
    path = out_dir / "errors-per-label.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
