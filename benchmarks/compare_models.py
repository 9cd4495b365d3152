"""Compare claim-type models (and, optionally, the three baselines) on the test split of a recipe.

    python benchmarks/compare_models.py shipped=models/claim-types teacher=runs/claim-types-teacher-model \
        student=runs/claim-types-student-model [--recipe training/claim-types.toml] [--baselines] [--speed] \
        [--write benchmarks/results/claim-types-teacher-student.md] [--errors student]

A model is ``NAME=PATH`` (or just ``PATH``). Two tables:

- the test documents that **no** model trained on or tuned its thresholds on (their manifests list those
  documents), so that every model, including one trained on another split, is scored on text it never saw;
  a paired bootstrap over these documents gives a 95% interval for each model's macro-F1 difference
  with the first model;
- the recipe's whole test split, for the models that saw none of it.

``--baselines`` adds (b) TF-IDF + logistic regression, (c) frozen all-MiniLM-L6-v2 and (d) frozen
all-mpnet-base-v2 mean-pooled embeddings + logistic regression, fitted on the recipe's train split with
thresholds tuned on its dev split (``benchmarks/baselines.py``). ``--speed`` times every model with
``load(path, fast=True)`` on the same sentences (the whole test split, after a warm-up).

``--errors NAME`` prints, for that model, its false positives and negatives on the unseen documents with
their text, on stderr only: corpus texts (SemEval, PTC) must not be copied into the repository.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from crossval_by_source import pool_sources, source_of  # benchmarks/crossval_by_source.py: one rule for sources
from report import publish  # benchmarks/report.py, beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BOOTSTRAP_SAMPLES = 2000

def macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """The library's macro F1 (:func:`stanceclf.model.metrics.multilabel_report`: labels without positives
    in ``truth`` are left out), NaN where no label has one."""
    from stanceclf.model.metrics import multilabel_report

    f1 = multilabel_report(truth, pred, [str(j) for j in range(truth.shape[1])])["macro"]["f1"]
    return float("nan") if f1 is None else f1


def bootstrap_difference(truth, pred_a, pred_b, docs, seed: int = 13,
                         samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """95% interval of macro F1 (b) - macro F1 (a), resampling whole documents ``samples`` times."""
    rng = np.random.default_rng(seed)
    names = sorted(set(docs))
    rows_of = {name: np.flatnonzero(docs == name) for name in names}
    diffs = []
    for _ in range(samples):
        rows = np.concatenate([rows_of[names[i]] for i in rng.integers(0, len(names), len(names))])
        diffs.append(macro_f1(truth[rows], pred_b[rows]) - macro_f1(truth[rows], pred_a[rows]))
    low, high = np.nanpercentile(diffs, [2.5, 97.5])  # a resample may leave a label without positives
    return float(low), float(high)


def baseline_scores(dataset, labels, names) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Test-split (decisions, scores) of each baseline, fitted on train with thresholds tuned on dev."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from baselines import embed, fit_predict_lr  # benchmarks/baselines.py

    split = {name: (list(dataset[name]["text"]), np.array(dataset[name]["labels"])) for name in ("train", "dev", "test")}
    (x_tr, y_tr), (x_dev, y_dev), (x_te, _) = split["train"], split["dev"], split["test"]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    results = {names["tfidf"]: fit_predict_lr(vectorizer.fit_transform(x_tr), y_tr, vectorizer.transform(x_dev),
                                              y_dev, vectorizer.transform(x_te))}
    for key, base in (("minilm", "packaged:all-minilm-l6-v2"), ("mpnet", "packaged:all-mpnet-base-v2")):
        e_tr, e_dev, e_te = (embed(x, base) for x in (x_tr, x_dev, x_te))
        results[names[key]] = fit_predict_lr(e_tr, y_tr, e_dev, y_dev, e_te)
    return results


def sentences_per_second(path: str, texts: list[str]) -> tuple[float, str]:
    from stanceclf.infer.predict import load

    model = load(path, fast=True)
    model.predict_proba(texts[:64])
    start = time.perf_counter()
    model.predict_proba(texts)
    return len(texts) / (time.perf_counter() - start), model.backend or "fp32"


def result_row(name, truth, pred, scores, sources, labels, speed=None) -> str:
    from stanceclf.model.metrics import format_metric, multilabel_report

    report = multilabel_report(truth, pred, labels, scores)
    cells = [" / ".join(format_metric(report["labels"][l][m]) for m in ("precision", "recall"))
             + f" / **{format_metric(report['labels'][l]['f1'])}**" for l in labels]
    per_source = [f"{macro_f1(truth[sources == s], pred[sources == s]):.3f}" for s in sorted(set(sources))]
    pr_auc = report["macro"].get("pr_auc")
    row = f"| {name} | " + " | ".join(cells) + f" | **{report['macro']['f1']:.3f}** | " \
          + format_metric(pr_auc) + " | " + " | ".join(per_source)
    if speed is not None:
        row += " | " + (f"{speed[0]:,.0f} ({speed[1]})" if speed else "-")
    return row + " |"


def table(title, rows_mask, dataset_test, systems, labels, speeds, notes, pooled: dict[str, str]) -> list[str]:
    """``pooled``: the documents of the unlabelled pool, by pool file (:func:`crossval_by_source.pool_sources`)."""
    truth = np.array(dataset_test["labels"])[rows_mask]
    docs = np.array(dataset_test["doc_id"])[rows_mask]
    sources = np.array([source_of(d, pooled) for d in docs])
    counts = {s: int((sources == s).sum()) for s in sorted(set(sources))}
    header = ("| system | " + " | ".join(f"{l} P / R / F1" for l in labels) + " | macro F1 | macro PR-AUC | "
              + " | ".join(f"{s} ({n} sent.)" for s, n in counts.items())
              + (" | sentences/s (backend) |" if speeds is not None else " |"))
    lines = [f"## {title}", "", f"{len(set(docs))} articles, {len(docs)} sentences; positives: "
             + ", ".join(f"{l} {int(truth[:, j].sum())}" for j, l in enumerate(labels)) + ".", "",
             header, "|---|" + "---|" * (len(labels) + 2 + len(counts) + (speeds is not None))]
    first = None
    for name, (pred, scores) in systems.items():
        pred, scores = pred[rows_mask], scores[rows_mask]
        speed = None if speeds is None else speeds.get(name, ())
        lines.append(result_row(name, truth, pred, scores, sources, labels, speed))
        if first is None:
            first = (name, pred)
        else:
            low, high = bootstrap_difference(truth, first[1], pred, docs)
            notes.append(f"- {name} - {first[0]}: macro F1 {macro_f1(truth, pred) - macro_f1(truth, first[1]):+.3f}, "
                         f"95% interval [{low:+.3f}, {high:+.3f}] ({BOOTSTRAP_SAMPLES} article resamples)")
    return lines


def print_errors(name, model_pred, scores, dataset_test, rows_mask, labels) -> None:
    """On stderr, so that redirecting the report cannot copy corpus text into a results file."""
    truth = np.array(dataset_test["labels"])
    for j, label in enumerate(labels):
        for kind, wrong in (("false positive", (model_pred[:, j] == 1) & (truth[:, j] == 0)),
                            ("false negative", (model_pred[:, j] == 0) & (truth[:, j] == 1))):
            print(f"\n### {name}: {label}, {kind}s", file=sys.stderr)
            for i in np.flatnonzero(wrong & rows_mask):
                row = dataset_test[int(i)]
                gold = ",".join(l for l, on in zip(labels, row["labels"]) if on) or "-"
                print(f"- {row['doc_id']} [{scores[i, j]:.2f}] gold={gold}: {row['text']}", file=sys.stderr)


def main() -> None:
    from stanceclf.data.schema import load_schema
    from stanceclf.infer.model import StanceModel
    from stanceclf.model.decision import decide
    from stanceclf.train.recipe import load_recipe
    from stanceclf.train.phases import prepare_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="NAME=PATH or PATH; the first is the reference")
    parser.add_argument("--recipe", default="training/claim-types.toml")
    parser.add_argument("--baselines", action="store_true", help="add the TF-IDF and frozen-embedding baselines")
    parser.add_argument("--speed", action="store_true", help="time each model with load(fast=True)")
    parser.add_argument("--errors", help="print this model's errors on the unseen articles (terminal only)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    args = parser.parse_args()

    named = dict(item.split("=", 1) if "=" in item else (item, item) for item in args.models)
    if args.errors and args.errors not in named:
        parser.error(f"--errors {args.errors}: not one of the models ({', '.join(named)})")
    recipe = load_recipe(args.recipe)
    labels = load_schema(recipe.schema_path).label_names
    dataset, _, _ = prepare_dataset(recipe, load_schema(recipe.schema_path))
    test = dataset["test"]
    texts, test_docs = list(test["text"]), np.array(test["doc_id"])
    seen_by, systems = {}, {}
    for name, path in named.items():
        model = StanceModel.from_pretrained(path)
        if model.labels != labels:
            raise SystemExit(f"{path}: labels {model.labels}, but the recipe's schema has {labels}")
        documents = model.manifest.documents_seen()
        if documents is None:
            raise SystemExit(f"{path}: its manifest does not list the documents it trained on, so the "
                             "articles it never saw cannot be told apart")
        seen_by[name] = documents["train"] | documents["dev"]
        probs = model.predict_proba(texts)
        systems[name] = (decide(probs, model.threshold_vector), probs)
    speeds = {name: sentences_per_second(path, texts) for name, path in named.items()} if args.speed else None
    models_only = dict(systems)
    if args.baselines:
        systems.update(baseline_scores(dataset, labels, {"tfidf": "(b) TF-IDF + logistic regression",
                                                          "minilm": "(c) frozen MiniLM-L6 + logistic regression",
                                                          "mpnet": "(d) frozen MPNet-base + logistic regression"}))
    unseen = ~np.isin(test_docs, sorted(set().union(*seen_by.values())))
    blind = {name: s for name, s in systems.items() if name not in seen_by or not seen_by[name] & set(test_docs)}

    notes: list[str] = []
    lines = ["# Claim-type models compared on held-back articles", "",
             "Command: `python benchmarks/" + Path(__file__).name + " " + shlex.join(sys.argv[1:]) + "`",
             f"Date {datetime.date.today()}, {platform.machine()} with {os.cpu_count()} cores, "
             f"Python {platform.python_version()}. Test split of recipe `{recipe.name}` (seed {recipe.seed}). "
             "Each model uses its own calibrated scores and thresholds; baselines use thresholds tuned on the "
             "recipe's dev split.", ""] + [f"{note}" for note in args.note] + [""]
    pooled = pool_sources([recipe.resolve(path) for path in recipe.data.inputs])
    lines += table("Test articles that no compared model trained or tuned on", unseen, test, systems, labels,
                   speeds, notes, pooled)
    if notes:
        lines += ["", "Paired bootstrap over these articles, against the first model:", ""] + notes
    if len(blind) > 0 and unseen.sum() < len(texts):
        notes.clear()
        lines += [""] + table("The whole test split (models that saw none of it)", np.ones(len(texts), bool), test,
                              blind, labels, speeds, notes, pooled)
        if notes:
            lines += ["", "Paired bootstrap over these articles, against the first model listed:", ""] + notes
    publish("\n".join(lines) + "\n", args.write)
    if args.errors:
        pred, scores = models_only[args.errors]
        print_errors(args.errors, pred, scores, test, unseen, labels)


if __name__ == "__main__":
    sys.exit(main())
