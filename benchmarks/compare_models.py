"""Compare two claim-type models on the test split of a recipe, restricted to the documents that
neither model trained on or tuned its thresholds on (their manifests list those documents).

    python benchmarks/compare_models.py OLD_MODEL NEW_MODEL [--recipe training/claim-types.toml]

Prints a table per model and macro/per-label F1 per source (document-id prefix: EN_UA_, EN_CC_,
PTC's article*, seed articles otherwise).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def source_of(doc_id: str) -> str:
    for prefix, name in (("article", "PTC"), ("EN_CC", "CC"), ("EN_UA", "UA")):
        if doc_id.startswith(prefix):
            return name
    return "seed"


def main() -> None:
    from stanceclf.data.schema import load_schema
    from stanceclf.infer.model import StanceModel
    from stanceclf.model.decision import decide
    from stanceclf.model.metrics import format_report, multilabel_report
    from stanceclf.train.recipe import load_recipe
    from stanceclf.train.trainer import prepare_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs=2)
    parser.add_argument("--recipe", default="training/claim-types.toml")
    args = parser.parse_args()
    models = [StanceModel.from_pretrained(path) for path in args.models]
    recipe = load_recipe(args.recipe)
    dataset, _, _ = prepare_dataset(recipe, load_schema(recipe.schema_path))
    seen = set()
    for model in models:
        documents = model.manifest.training.get("documents", {})
        seen |= set(documents.get("train", [])) | set(documents.get("dev", []))
    test = dataset["test"].filter(lambda row: row["doc_id"] not in seen)
    texts, truth = list(test["text"]), np.array(test["labels"])
    sources = np.array([source_of(d) for d in test["doc_id"]])
    print(f"{len(set(test['doc_id']))} documents, {len(texts)} sentences that neither model has seen\n")
    for path, model in zip(args.models, models):
        probs, _ = model.predict_proba(texts)
        print(format_report(multilabel_report(truth, decide(probs, model.threshold_vector), model.labels, probs),
                            title=path))
        for source in sorted(set(sources)):
            rows = sources == source
            report = multilabel_report(truth[rows], decide(probs[rows], model.threshold_vector), model.labels,
                                       probs[rows])
            per_label = ", ".join(f"{label} {report['labels'][label]['f1'] or 0:.3f}" for label in model.labels)
            print(f"- {source}: {rows.sum()} sentences, macro F1 {report['macro']['f1']:.3f} ({per_label})")
        print()


if __name__ == "__main__":
    main()
