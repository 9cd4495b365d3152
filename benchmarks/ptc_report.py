"""The PTC retraining proof: dev-set F1 of the PTC models, wall time and peak memory.

    python benchmarks/ptc_report.py \
        training/ptc-propaganda.toml=runs/ptc-propaganda-model \
        training/ptc-techniques.toml=runs/ptc-techniques-model --write benchmarks/results/ptc.md

Each pair is a recipe and the model directory ``stanceclf train RECIPE`` wrote. The dev split
(PTC's own dev folder, 57 articles) is rebuilt from the recipe and scored with the model's
calibrated scores and tuned thresholds; wall time and peak RSS are those the training run
stamped into the model's manifest.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

from report import publish  # benchmarks/report.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stanceclf.train.evaluation import evaluate_model  # noqa: E402
from stanceclf.model.metrics import format_report  # noqa: E402
from stanceclf.infer.model import StanceModel  # noqa: E402
from stanceclf.train.recipe import load_recipe  # noqa: E402
from stanceclf.data.schema import load_schema  # noqa: E402
from stanceclf.train.phases import prepare_dataset  # noqa: E402

REFERENCE = ("Published reference (Da San Martino et al., EMNLP 2019, Table 7, sentence-level task, on the "
             "held-out **test** partition of 101 articles, which is not in ../shared): BERT-base P 63.20 / R 53.16 / "
             "F1 57.74; best model (MGN ReLU) F1 60.98. The figures here are on the **dev** partition (57 articles), "
             "which also chose the decision threshold: they are not directly comparable, and dev F1 is optimistic.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", help="RECIPE=MODEL_DIR")
    parser.add_argument("--note", action="append", default=[], help="a line to add at the end")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    lines = ["# PTC: retraining on new labels with no code change", "",
             "Command: `python benchmarks/ptc_report.py " + " ".join(sys.argv[1:]) + "`",
             f"Date {datetime.date.today()}, {platform.machine()} with {os.cpu_count()} cores (no GPU), "
             f"Python {platform.python_version()}.", "", REFERENCE, ""]
    for pair in args.pairs:
        recipe_path, model_dir = pair.split("=", 1)
        recipe = load_recipe(recipe_path)
        model = StanceModel.from_pretrained(model_dir)
        dataset, _, read_report = prepare_dataset(recipe, load_schema(recipe.schema_path))
        report, _, _ = evaluate_model(model, dataset["dev"])
        training = model.manifest.training
        settings = training["recipe"]["training"]
        train_stats = next(r for r in training["statistics"] if r["split"] == "train")
        lines += [f"## `{recipe_path}` -> `{model_dir}`", "",
                  f"- Schema `{recipe.schema_name}` ({len(model.labels)} labels); base `{recipe.base_model}`; "
                  f"{train_stats['sentences']} train sentences from {train_stats['documents']} articles.",
                  f"- Training: {settings['method']}, lr {settings['learning_rate']}, batch {settings['batch_size']}, "
                  f"max length {settings['max_length']}, {training['epochs_run']} epochs; wall time "
                  f"{training['wall_seconds']:.0f} s ({training['wall_seconds'] / 60:.1f} min) on this 2-core machine, "
                  f"peak RSS of the training process {training['peak_rss_mb']:.0f} MB.",
                  f"- Reader: {read_report.summary().splitlines()[0]}; "
                  f"{len(read_report.skipped)} item(s) skipped (listed by `stanceclf train`).",
                  "", format_report(report, title="dev split (PTC dev folder)"), ""]
    if args.note:
        lines += ["## Notes", ""] + [f"- {note}" for note in args.note]
    text = "\n".join(lines) + "\n"
    publish(text, args.write)


if __name__ == "__main__":
    main()
