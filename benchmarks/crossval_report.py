"""How well a recipe generalises: k-fold and leave-one-source-out cross-validation, a learning curve,
and dev thresholds against out-of-fold thresholds, in one Markdown file.

    python benchmarks/crossval_report.py --recipe training/claim-types.toml --work runs/crossval \
        --folds 5 --sizes 25,50,100,150 --write benchmarks/results/claim-types-crossval.md

Run it from the repository root. Each step runs a ``stanceclf`` command (printed, and written above
its table) in a subprocess:

1. ``stanceclf cross-validate RECIPE --folds K``: F1, precision, recall, PR-AUC per label, mean ± sd
   over folds, and the pooled out-of-fold figures;
2. ``stanceclf cross-validate RECIPE --by-source``: one row per held-out source;
3. ``stanceclf learning-curve RECIPE --sizes ... --folds K``: test F1 against training articles;
4. ``stanceclf train RECIPE`` twice, thresholds fitted on dev and on out-of-fold predictions
   (``calibration.thresholds``), the same final model scored on the recipe's test split.

Every step resumes: finished folds and trainings in ``--work`` are reused, so the script can be
stopped and run again. ``--set`` overrides go to every command (``--set training.max_steps=2`` for a
quick end-to-end check). ``--skip`` leaves steps out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stanceclf.model.metrics import format_metric  # noqa: E402
from stanceclf.train.fold_reports import format_mean_sd, mean_sd_table  # noqa: E402

STEPS = ("kfold", "by-source", "learning-curve", "thresholds")


def run(argv: list[str]) -> tuple[str, float]:
    """Run a stanceclf command and return how it reads in the results file, and its wall time."""
    command = "stanceclf " + shlex.join(argv)
    print(f"$ {command}", flush=True)
    started = time.time()
    subprocess.run([sys.executable, "-m", "stanceclf.cli", *argv], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    return command, time.time() - started


def kfold_section(args, overrides: list[str]) -> list[str]:
    out = args.work / "kfold"
    command, wall = run(["cross-validate", str(args.recipe), "--folds", str(args.folds), "--out", str(out),
                         *overrides])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    pooled = report["pooled"]
    return [f"## {report['folds']}-fold cross-validation, grouped by document", "", f"Command: `{command}` "
            f"({wall / 60:.0f} min). {report['documents']} documents, {report['sentences']} sentences; dev fraction "
            f"{report['dev_fraction']:.2f} of each fold's other documents.", "",
            "Mean ± sd over folds (sample sd):", "", *mean_sd_table(report["mean_sd"], report["labels"]), "",
            f"Pooled out-of-fold: macro F1 **{format_metric(pooled['macro']['f1'])}**, micro F1 "
            f"{format_metric(pooled['micro']['f1'])}, F1 per label "
            + ", ".join(f"{label} {format_metric(row['f1'])}" for label, row in pooled["labels"].items())
            + f"; ECE {pooled['ece']:.4f}.", ""]


def by_source_section(args, overrides: list[str]) -> list[str]:
    out = args.work / "by-source"
    command, wall = run(["cross-validate", str(args.recipe), "--by-source", "--out", str(out), *overrides])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    labels = report["labels"]
    lines = ["## Leave one source out", "", f"Command: `{command}` ({wall / 60:.0f} min). Sources: "
             + ", ".join(f"{name} = {patterns}" for name, patterns in report["sources"].items())
             + f". {len(report['training_only_documents'])} document(s) of no source (the seed articles) are only "
             "ever trained on.", "",
             "| held-out source | train + dev docs | test docs | test sentences | macro F1 | "
             + " | ".join(f"{label} F1" for label in labels) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(labels)]
    for fold in report["per_fold"]:
        test = fold["test_report"]
        lines.append(f"| {fold['name']} | {fold['documents']['train'] + fold['documents']['dev']} | "
                     f"{fold['documents']['test']} | {fold['sentences']['test']} | **{format_metric(test['macro']['f1'])}** | "
                     + " | ".join(format_metric(test["labels"][label]["f1"]) for label in labels) + " |")
    return lines + [""]


def learning_curve_section(args, overrides: list[str]) -> list[str]:
    out = args.work / "learning-curve"
    command, wall = run(["learning-curve", str(args.recipe), "--sizes", args.sizes, "--folds", str(args.folds),
                         "--out", str(out), *overrides])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    labels = report["labels"]
    lines = ["## Learning curve", "", f"Command: `{command}` ({wall / 60:.0f} min). Test F1, mean ± sd over "
             f"{report['folds']} folds; plot `{out / 'learning-curve.png'}`.", "",
             "| training articles | macro F1 | " + " | ".join(f"{label} F1" for label in labels) + " |",
             "|---:|---:|" + "---:|" * len(labels)]
    for row in report["sizes"]:
        lines.append(f"| {row['training_articles']} | {format_mean_sd(row['macro']['f1'])} | "
                     + " | ".join(format_mean_sd(row["labels"][label]["f1"]) for label in labels) + " |")
    return lines + [""]


def thresholds_section(args, overrides: list[str]) -> list[str]:
    lines = ["## Thresholds fitted on dev vs on out-of-fold predictions", "",
             "The same recipe trained twice from the same seed; only `calibration.thresholds` differs, so the "
             "rows differ by the final model's temperatures and thresholds (up to run-to-run noise of the "
             "training itself). Figures on the recipe's test split.", "",
             "| thresholds | command | test macro F1 | test micro F1 | test ECE | thresholds |",
             "|---|---|---:|---:|---:|---|"]
    for method in ("dev", "cross-validation"):
        model = args.work / f"model-{method}"
        command, _ = run(["train", str(args.recipe), "--set", f'calibration.thresholds="{method}"', "--set",
                          f"calibration.folds={args.folds}", "--set", f"output_dir={from_recipe(args, model)}",
                          "--set", f"run_dir={from_recipe(args, args.work / f'run-{method}')}", *overrides])
        manifest = json.loads((model / "stanceclf.json").read_text(encoding="utf-8"))
        test = manifest["metrics"]["test"]
        thresholds = ", ".join(f"{label} {value:.3f}" for label, value in manifest["thresholds"].items())
        lines.append(f"| {method} | `{command}` | **{format_metric(test['macro']['f1'])}** | "
                     f"{format_metric(test['micro']['f1'])} | "
                     f"{test['ece_after_calibration']:.4f} | {thresholds} |")
    return lines + [""]


def from_recipe(args, path: Path) -> str:
    """``path`` as a recipe value: relative to the recipe's folder."""
    return os.path.relpath(path.resolve(), args.recipe.resolve().parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("training/claim-types.toml"))
    parser.add_argument("--work", type=Path, default=Path("runs/crossval"), help="folds, trainings and reports")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--sizes", default="25,50,100,150")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a recipe override for every step")
    parser.add_argument("--skip", action="append", default=[], choices=STEPS)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    overrides = [part for override in args.overrides for part in ("--set", override)]
    lines = [f"# Generalisation of recipe `{args.recipe}`", "",
             "Command: `python benchmarks/crossval_report.py " + shlex.join(sys.argv[1:]) + "`",
             f"Date {datetime.date.today()}, {platform.machine()} with {os.cpu_count()} cores, "
             f"Python {platform.python_version()}.", ""]
    sections = {"kfold": kfold_section, "by-source": by_source_section, "learning-curve": learning_curve_section,
                "thresholds": thresholds_section}
    for step in STEPS:
        if step in args.skip:
            continue
        lines += sections[step](args, overrides)
        if args.write:  # after every step, so that hours of finished steps are on disk if a later one fails
            args.write.parent.mkdir(parents=True, exist_ok=True)
            args.write.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
