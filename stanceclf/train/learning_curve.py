"""Learning curve of a recipe: test F1 against the number of training articles.

The documents are split into document-grouped folds as in :func:`stanceclf.train.crossval.cross_validate`;
in each fold the non-test documents are split once into train and dev (dev stays the same for every
size: early stopping and calibration), and the model is trained on the first ``n`` articles of a
seeded shuffle of that fold's train documents, for each ``n`` of ``sizes`` (so the subsets are
nested). Each (fold, size) is tested on the fold's documents; the report gives mean and sd over folds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from stanceclf.errors import EvaluationError
from stanceclf.train.fold_reports import format_mean_sd, summarise
from stanceclf.train.fold_runner import Setup
from stanceclf.train.folds import default_dev_fraction, kfold_plan
from stanceclf.train.recipe import Recipe


def learning_curve(recipe: Recipe, sizes: list[int], out_dir: str | Path, *, folds: int | None = None,
                   make_model: Callable | None = None, tokenizer=None, resume: bool = True, progress: bool = True,
                   echo: Callable[[str], None] | None = None, teacher_overrides: list[str] | None = None) -> dict:
    """Train on growing numbers of training articles and write ``report.json``, ``report.md`` and
    ``learning-curve.png`` to ``out_dir``. Returns the report. A [distill] recipe's teachers are trained
    on each subset too (their recipes with ``teacher_overrides``); the report gives the student's figures."""
    sizes = sorted(set(sizes))
    if not sizes or sizes[0] < 1:
        raise EvaluationError(f"sizes must be positive numbers of training articles, got {sizes}")
    out_dir = Path(out_dir)
    setup = Setup.of(recipe, out_dir, make_model=make_model, tokenizer=tokenizer, resume=resume, progress=progress,
                     echo=echo, teacher_overrides=teacher_overrides)
    pool, runner = setup.pool, setup.runner
    plan = kfold_plan(pool, folds or recipe.evaluation.folds, recipe.seed)
    dev_fraction = default_dev_fraction(recipe, setup.info)
    splits = pool.fold_splits(plan, dev_fraction, recipe.seed)
    available = min(len(train) for train, _ in splits)
    if sizes[-1] > available:
        raise EvaluationError(f"size {sizes[-1]} is more than the {available} training articles the smallest fold "
                              f"has ({len(pool.documents)} documents, {len(plan)} folds, dev fraction "
                              f"{dev_fraction:.2f}); use sizes up to {available}")
    records: dict[int, list[dict]] = {n: [] for n in sizes}
    total, done = len(plan) * len(sizes), 0
    for number, (fold, (train, dev)) in enumerate(zip(plan, splits), 1):
        order = list(train)
        random.Random(recipe.seed + number).shuffle(order)
        for n in sizes:
            done += 1
            runner.echo(f"learning curve {done}/{total}: fold {number}/{len(plan)}, {n} training articles")
            records[n].append(runner.run(f"{fold.name}-n{n}", order[:n], dev, fold.test))
    labels = setup.schema.label_names
    report = {"recipe": recipe.name, "folds": len(plan), "seed": recipe.seed, "dev_fraction": dev_fraction,
              "data_fingerprint": pool.fingerprint, "documents": len(pool.documents), "labels": labels,
              "sizes": [{"training_articles": n, "training_sentences": [r["sentences"]["train"] for r in records[n]],
                         **summarise(records[n], labels)} for n in sizes]}
    write_learning_curve(report, out_dir)
    return report


def write_learning_curve(report: dict, out_dir: Path) -> list[Path]:
    """``report.json``, ``report.md`` (a row per size: F1 mean ± sd) and ``learning-curve.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = report["labels"]
    lines = [f"# Learning curve of recipe `{report['recipe']}`", "",
             f"{report['documents']} documents in {report['folds']} document-grouped folds, seed {report['seed']}. "
             "Each row trains on that many articles (a seeded random subset of each fold's training documents, "
             f"nested across sizes; dev fraction {report['dev_fraction']:.2f} held out for early stopping and "
             "calibration, the same for every size) and tests on the fold's documents. Test F1 as mean ± sd "
             "over folds.", "",
             "| training articles | mean training sentences | macro F1 | "
             + " | ".join(f"{label} F1" for label in labels) + " |",
             "|---:|---:|---:|" + "---:|" * len(labels)]
    for row in report["sizes"]:
        sentences = sum(row["training_sentences"]) / len(row["training_sentences"])
        lines.append(f"| {row['training_articles']} | {sentences:.0f} | {format_mean_sd(row['macro']['f1'])} | "
                     + " | ".join(format_mean_sd(row["labels"][l]["f1"]) for l in labels) + " |")
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [row["training_articles"] for row in report["sizes"]]
    for name, pick in [("macro", lambda row: row["macro"]["f1"])] + [
            (label, lambda row, label=label: row["labels"][label]["f1"]) for label in labels]:
        means = [pick(row)["mean"] for row in report["sizes"]]
        if all(mean is None for mean in means):
            continue  # a label with no positive in any fold has no F1 to plot
        means = [float("nan") if mean is None else mean for mean in means]
        errors = [pick(row)["sd"] or 0.0 for row in report["sizes"]]
        ax.errorbar(x, means, yerr=errors, marker="o", capsize=3, label=name, linewidth=2.5 if name == "macro" else 1)
    ax.set(xlabel="training articles", ylabel="test F1 (mean ± sd over folds)", ylim=(0, 1),
           title=f"learning curve: {report['recipe']}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "learning-curve.png"]
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths
