"""Baselines against the fine-tuned model, on the model's own document-grouped split.

    python benchmarks/baselines.py --recipe training/claim-types.toml --model models/claim-types \
        --write benchmarks/results/claim-types-baselines.md

(a) keyword rules, (b) TF-IDF + logistic regression, (c) frozen sentence embeddings
of the base model (mean pooling) + logistic regression. (b) and (c) get per-label
thresholds tuned on dev, like the fine-tuned model; (a) has no scores to tune.
All are scored on the test split that the recipe builds (same seed, same documents).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path

from report import publish  # benchmarks/report.py, beside this script

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Hand-written cues per label: a baseline that shows what keywords alone achieve.
KEYWORDS = {
    "prediction": r"\b(will|would|could|might|may|likely|unlikely|expect\w*|forecast\w*|predict\w*|going to|"
                  r"potential(ly)?|soon|future|next year|probably|possib\w+)\b",
    "threat_framing": r"\b(threat\w*|danger\w*|risk\w*|menac\w*|warn\w*|aggress\w*|escalat\w*|attack\w*|"
                      r"war\b|nuclear|destroy\w*|catastroph\w*|provoc\w*|hostil\w*|terror\w*)",
    "policy_attribution": r"\b(aims?|aimed|seeks?|sought|wants?|plans?|planned|strateg\w*|polic\w*|intend\w*|"
                          r"intention\w*|goal|objective|position|decided|approved|sanction\w*|calculat\w*|"
                          r"(is|are|was|were) trying|push\w* for|insists?|demand\w*)\b",
}


def keyword_predictions(texts: list[str], labels: list[str]) -> np.ndarray:
    patterns = [re.compile(KEYWORDS[label], re.IGNORECASE) for label in labels]
    return np.array([[int(bool(p.search(t))) for p in patterns] for t in texts])


def embed(texts: list[str], base: str, batch_size: int = 64) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from stanceclf.model.base_models import resolve_base

    path = resolve_base(base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.vstack(out)


def fit_predict_lr(x_train, y_train, x_dev, y_dev, x_test):
    from sklearn.linear_model import LogisticRegression

    from stanceclf.train.calibration import fit_thresholds

    dev_scores, test_scores = [], []
    for j in range(y_train.shape[1]):
        clf = LogisticRegression(max_iter=2000, class_weight="balanced", C=4.0)
        clf.fit(x_train, y_train[:, j])
        dev_scores.append(clf.predict_proba(x_dev)[:, 1])
        test_scores.append(clf.predict_proba(x_test)[:, 1])
    dev_scores, test_scores = np.array(dev_scores).T, np.array(test_scores).T
    thresholds = fit_thresholds(dev_scores, y_dev)
    return (test_scores >= thresholds).astype(int), test_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="training/claim-types.toml")
    parser.add_argument("--model", default="models/claim-types")
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    args = parser.parse_args()

    from sklearn.feature_extraction.text import TfidfVectorizer

    from stanceclf.train.evaluation import evaluate_model
    from stanceclf.model.metrics import multilabel_report
    from stanceclf.infer.predict import load
    from stanceclf.train.recipe import load_recipe
    from stanceclf.data.schema import load_schema
    from stanceclf.train.phases import prepare_dataset

    recipe = load_recipe(args.recipe)
    schema = load_schema(recipe.schema_path)
    labels = schema.label_names
    dataset, info, _ = prepare_dataset(recipe, schema)
    model = load(args.model)
    recorded = model.manifest.training.get("documents")
    built = {name: sorted(set(dataset[name]["doc_id"])) for name in dataset}
    if recorded is not None and {k: sorted(v) for k, v in recorded.items()} != built:
        raise SystemExit("the recipe now builds another split than the one the model was trained on; "
                         "baselines would be compared on different test documents")
    split = {name: (list(dataset[name]["text"]), np.array(dataset[name]["labels"])) for name in ("train", "dev", "test")}
    (x_tr, y_tr), (x_dev, y_dev), (x_te, y_te) = split["train"], split["dev"], split["test"]

    results = {}
    t0 = time.time()
    pred = keyword_predictions(x_te, labels)
    results["(a) keyword rules"] = (multilabel_report(y_te, pred, labels), time.time() - t0)

    t0 = time.time()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    pred, scores = fit_predict_lr(vectorizer.fit_transform(x_tr), y_tr, vectorizer.transform(x_dev), y_dev,
                                  vectorizer.transform(x_te))
    results["(b) TF-IDF + logistic regression"] = (multilabel_report(y_te, pred, labels, scores), time.time() - t0)

    t0 = time.time()
    e_tr, e_dev, e_te = (embed(x, recipe.base_model) for x in (x_tr, x_dev, x_te))
    pred, scores = fit_predict_lr(e_tr, y_tr, e_dev, y_dev, e_te)
    results["(c) frozen MiniLM embeddings + logistic regression"] = (multilabel_report(y_te, pred, labels, scores),
                                                                      time.time() - t0)

    t0 = time.time()
    report, _, _ = evaluate_model(model, dataset["test"])
    results["fine-tuned model (models/claim-types)"] = (report, time.time() - t0)

    lines = ["# Claim-type model vs baselines (test split)", "",
             f"Command: `python benchmarks/baselines.py --recipe {args.recipe} --model {args.model}"
             + (f" --write {args.write}`" if args.write else "`"),
             f"Date {datetime.date.today()}, {platform.machine()} with {os.cpu_count()} cores, Python "
             f"{platform.python_version()}.",
             f"Split: recipe `{recipe.name}` seed {recipe.seed}, documents grouped; test = "
             f"{len(x_te)} sentences from {len(set(dataset['test']['doc_id']))} articles "
             f"(positives: " + ", ".join(f"{l} {int(y_te[:, j].sum())}" for j, l in enumerate(labels)) + ").",
             "", "| system | " + " | ".join(f"{l} P / R / F1" for l in labels) + " | macro F1 | micro F1 |",
             "|---|" + "---|" * (len(labels) + 2)]
    for name, (rep, _) in results.items():
        cells = [f"{rep['labels'][l]['precision']:.2f} / {rep['labels'][l]['recall']:.2f} / "
                 f"**{rep['labels'][l]['f1']:.3f}**" for l in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | **{rep['macro']['f1']:.3f}** | {rep['micro']['f1']:.3f} |")
    model_f1 = results["fine-tuned model (models/claim-types)"][0]["macro"]["f1"]
    best_name, (best_rep, _) = max(((n, r) for n, r in results.items() if not n.startswith("fine")),
                                   key=lambda item: item[1][0]["macro"]["f1"])
    lines += ["", f"The fine-tuned model's macro F1 is {model_f1:.3f}, "
              f"{model_f1 - best_rep['macro']['f1']:+.3f} against the best baseline ({best_name}, "
              f"{best_rep['macro']['f1']:.3f})."]
    text = "\n".join(lines) + "\n"
    publish(text, args.write)


if __name__ == "__main__":
    sys.exit(main())
