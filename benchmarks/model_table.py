"""Tabulate trained model directories from their manifests: metrics, time, memory, size.

    python benchmarks/model_table.py models/claim-types runs/claim-types-lora --split test \
        --title "Full fine-tuning vs LoRA" --write benchmarks/results/lora-vs-full.md

Everything comes from each model's ``stanceclf.json`` (written by ``stanceclf train``): the
metrics of the chosen split, the recipe, training wall time and the training process's
peak RSS; the weight size is the size of ``model.safetensors`` (or of an adapter directory's adapter) on disk.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from report import publish  # benchmarks/report.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stanceclf.model.layout import weights_file  # noqa: E402
from stanceclf.model.manifest import ModelManifest  # noqa: E402
from stanceclf.model.metrics import format_metric  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--title", default="Models")
    parser.add_argument("--per-label", action="store_true", help="also one row per label and model")
    parser.add_argument("--dev", action="store_true", help="also a column with the dev split's macro F1")
    parser.add_argument("--write", type=Path)
    parser.add_argument("--note", action="append", default=[], help="a line to add under the table")
    args = parser.parse_args()

    dev_head, dev_rule = ("dev macro F1 | ", "---:|") if args.dev else ("", "")
    lines = [f"# {args.title}", "", "Command: `python benchmarks/model_table.py " + " ".join(sys.argv[1:]) + "`", "",
             f"| model | method | epochs run | {dev_head}{args.split} macro F1 | {args.split} micro F1 | macro PR-AUC | "
             "train wall s | peak RSS MB | weights MB |", f"|---|---|---:|{dev_rule}---:|---:|---:|---:|---:|---:|"]
    per_label = []
    for directory in args.models:
        manifest = ModelManifest.read(directory)
        report = manifest.metrics.get(args.split)
        if report is None:
            raise SystemExit(f"{directory}: no {args.split!r} metrics in the manifest ({list(manifest.metrics)})")
        training = manifest.training
        settings = training.get("recipe", {}).get("training", {})
        size = weights_file(directory).stat().st_size / 1e6
        fmt = format_metric  # "-" for a metric left undefined (a label without positives in the split)
        precision = settings.get("precision", "float32")
        method = f"{settings.get('method')}{'' if precision == 'float32' else ', ' + precision} " \
                 f"(lr {settings.get('learning_rate')})"
        dev = f"{fmt(manifest.metrics['dev']['macro']['f1'])} | " if args.dev else ""
        lines.append(f"| `{directory}` | {method} | "
                     f"{training.get('epochs_run')} | {dev}**{fmt(report['macro']['f1'])}** | "
                     f"{fmt(report['micro']['f1'])} | {fmt(report['macro'].get('pr_auc'))} | "
                     f"{training.get('wall_seconds')} | "
                     f"{training.get('peak_rss_mb')} | {size:.1f} |")
        for label, row in report["labels"].items():
            per_label.append(f"| `{directory.name}` | {label} | {fmt(row['precision'])} | {fmt(row['recall'])} | "
                             f"**{fmt(row['f1'])}** | {row['support']} |")
    if args.per_label:
        lines += ["", f"Per label ({args.split} split):", "", "| model | label | precision | recall | F1 | support |",
                  "|---|---|---:|---:|---:|---:|", *per_label]
    lines += [""] + [note for note in args.note]
    text = "\n".join(lines) + "\n"
    publish(text, args.write)


if __name__ == "__main__":
    main()
