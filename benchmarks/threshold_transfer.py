"""How much do a fold's dev-tuned thresholds cost on its test documents? Read from kept fold records.

    python benchmarks/threshold_transfer.py \
        "previous default recipe=benchmarks/results/crossval/claim-types/folds" \
        "shipped student=benchmarks/results/crossval/claim-types-student/folds" \
        "fold teacher=benchmarks/results/crossval/claim-types-student/teachers/1-claim-types-teacher/folds" \
        --write benchmarks/results/claim-types-thresholds.md

Each argument is ``NAME=FOLDER`` where FOLDER is the ``folds/`` folder of a ``stanceclf cross-validate``
run (``fold-N.json``, or one file per source with ``--by-source``): every JSON file in it is read as a
fold record (test logits, labels, the fold model's temperatures and dev-tuned thresholds). Nothing
is trained: every row rescores the same test logits with other thresholds, all through the library's
own rule (:func:`stanceclf.train.calibration.fit_thresholds`, :func:`stanceclf.model.decision.decide`):

- **dev**: the thresholds the fold model chose on its own dev documents (what a trained model ships);
- **other folds**: thresholds fitted on the pooled test predictions of the run's other folds (each
  with its own model's temperatures): out-of-fold thresholds from documents the model never saw,
  more of them than one dev split holds; only where a run has two or more folds;
- **0.5**: one fixed cut on the calibrated probabilities, nothing tuned;
- **test (oracle)**: thresholds fitted on the test documents themselves, an upper bound no model can
  reach; its distance from the others is what threshold choice alone could still win.

A row's first check: the dev row must reproduce the F1 the fold record reports, or the script stops.
``--note`` paragraphs are prose: like ``crossval_compare.py``, the command written above the tables
leaves them out, so give them again when rerunning with ``--write``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import publish  # noqa: E402

from stanceclf.model.decision import decide, probabilities  # noqa: E402
from stanceclf.model.metrics import format_metric, multilabel_report  # noqa: E402
from stanceclf.train.calibration import fit_thresholds  # noqa: E402


def read_folds(folder: Path) -> dict[str, dict]:
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise SystemExit(f"{folder}: no fold records (*.json); give the folds/ folder of a cross-validate --out")
    records = {}
    for path in paths:
        record = json.loads(path.read_text(encoding="utf-8"))
        for key in ("logits", "labels", "temperatures", "thresholds", "test_report"):
            if key not in record:
                raise SystemExit(f"{path}: no {key!r}; not a fold record of stanceclf cross-validate")
        records[record["name"]] = record
    return records


def fold_arrays(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """The fold's calibrated test probabilities and its labels."""
    return probabilities(np.asarray(record["logits"]), np.asarray(record["temperatures"])), np.asarray(record["labels"])


def score(probs: np.ndarray, y_true: np.ndarray, thresholds: np.ndarray, labels: list[str]) -> dict:
    return multilabel_report(y_true, decide(probs, thresholds), labels)


def transfer_rows(records: dict[str, dict]) -> tuple[list[str], dict[str, dict[str, dict]]]:
    """Per fold, the test report under each way of choosing thresholds."""
    labels = list(next(iter(records.values()))["test_report"]["labels"])
    arrays = {name: fold_arrays(record) for name, record in records.items()}
    rows: dict[str, dict[str, dict]] = {}
    for name, record in records.items():
        probs, y_true = arrays[name]
        dev = score(probs, y_true, np.asarray(record["thresholds"]), labels)
        recorded = record["test_report"]["macro"]["f1"]
        if abs(dev["macro"]["f1"] - recorded) > 1e-6:
            raise SystemExit(f"{name}: its dev thresholds give macro F1 {dev['macro']['f1']:.6f} on its test logits, "
                             f"the record says {recorded:.6f}; the record is not what this script expects")
        rows[name] = {"dev": dev}
        others = [arrays[other] for other in records if other != name]
        if others:
            pooled_probs = np.concatenate([p for p, _ in others])
            pooled_true = np.concatenate([y for _, y in others])
            rows[name]["other folds"] = score(probs, y_true, fit_thresholds(pooled_probs, pooled_true), labels)
        rows[name]["0.5"] = score(probs, y_true, np.full(len(labels), 0.5), labels)
        rows[name]["test (oracle)"] = score(probs, y_true, fit_thresholds(probs, y_true), labels)
    return labels, rows


def table(title: str, labels: list[str], rows: dict[str, dict[str, dict]]) -> list[str]:
    methods = list(next(iter(rows.values())))
    folds = list(rows)
    lines = [f"## {title}", "", f"Folds: {', '.join(folds)}. Test macro F1 per fold, then the mean over folds "
             "of the macro F1 and of each label's F1 (precision / recall of the label in brackets).", "",
             "| thresholds | " + " | ".join(folds) + " | mean macro F1 | "
             + " | ".join(labels) + " |",
             "|---|" + "---:|" * (len(folds) + 1 + len(labels))]
    for method in methods:
        if any(method not in rows[fold] for fold in folds):
            continue
        reports = [rows[fold][method] for fold in folds]

        def mean(key_path):
            values = [key_path(report) for report in reports]
            return None if any(value is None for value in values) else float(np.mean(values))

        per_label = []
        for label in labels:
            f1 = mean(lambda report: report["labels"][label]["f1"])
            precision = mean(lambda report: report["labels"][label]["precision"])
            recall = mean(lambda report: report["labels"][label]["recall"])
            per_label.append(f"{format_metric(f1)} ({format_metric(precision)} / {format_metric(recall)})")
        lines.append(f"| {method} | " + " | ".join(format_metric(report["macro"]["f1"]) for report in reports)
                     + f" | **{format_metric(mean(lambda report: report['macro']['f1']))}** | "
                     + " | ".join(per_label) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="NAME=FOLDER", help="a name, and a folder of fold-N.json records")
    parser.add_argument("--note", action="append", default=[], help="a paragraph above the tables (repeatable): "
                        "where the records come from, what they show")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    # The command as shown: the notes are prose, left out so that it stays readable (as crossval_compare.py).
    shown = [*args.runs, *(["--write", str(args.write)] if args.write else [])]
    lines = ["# Thresholds: dev-tuned against out-of-fold, fixed and oracle, on kept fold records", "",
             "Command: `python benchmarks/threshold_transfer.py " + shlex.join(shown) + "`", "",
             "Nothing is trained; each row rescores the fold models' test logits. See the script's docstring "
             "for what each row means.", "", *[line for note in args.note for line in (note, "")]]
    for run in args.runs:
        name, sep, folder = run.rpartition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"{run!r}: expected NAME=FOLDER")
        labels, rows = transfer_rows(read_folds(Path(folder)))
        lines += table(name, labels, rows)
    publish("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
