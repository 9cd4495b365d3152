"""Two cross-validations on the same folds, compared fold by fold: paired differences, not two means.

    python benchmarks/crossval_compare.py runs/crossval/kfold runs/crossval/student \
        --names "previous default's recipe" "distilled student" \
        --write benchmarks/results/claim-types-student-crossval.md

Each folder is the ``--out`` of a ``stanceclf cross-validate`` run. Folds are matched by name. Where
they hold the same test documents they are compared as they are. Where one run's data grew (more
documents, the earlier ones kept in their folds: ``[evaluation] keep_folds_of``), both folds are
narrowed to the test documents they share and scored again under each fold's own temperatures and
thresholds; that needs a record that says which document each test row is from (``row_documents``,
in fold records written since 2026-12-06), and the shared rows' gold labels must agree, or the script
stops. Where the labels were corrected between the runs (a second reading, an adjudication),
``--gold second`` judges both runs by the second run's labels instead: a fold model's predictions on its
test documents do not depend on their gold labels, so the reference is scored again against the
corrected ones (under its own thresholds), on the same rows. Only folds finished in both runs are compared, so a partial run (``--only``) can be set against
a finished one. Where the second run is of a ``[distill]`` recipe, the teachers trained in each of its
folds are shown too (not on narrowed folds: a teacher's record is not read here).

Fold to fold, the test documents change much more than the models do (the reference's macro F1
ranges over 0.07 between folds), so the paired difference per fold says more than a difference of
means.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections import Counter
from pathlib import Path

import numpy as np
from report import publish

from stanceclf.train.fold_reports import mean_sd
from stanceclf.train.phases import evaluate_logits


def fold_records(folder: Path) -> dict[str, dict]:
    """The folds the folder's last report covers, by name (a fold file of an older recipe that the
    report left out is not read)."""
    report = folder / "report.json"
    if not report.exists():
        raise SystemExit(f"{folder}: no report.json; is it the --out of a finished stanceclf cross-validate run?")
    per_fold = json.loads(report.read_text(encoding="utf-8"))["per_fold"]
    records = {}
    for name in (fold["name"] for fold in per_fold):
        path = folder / "folds" / f"{name}.json"
        if not path.exists():
            raise SystemExit(f"{path}: missing, though report.json lists the fold; run the cross-validation again")
        records[name] = json.loads(path.read_text(encoding="utf-8"))
    return records


def scores(report: dict, labels: list[str]) -> list[float | None]:
    """Macro F1, then each label's F1."""
    return [report["macro"]["f1"]] + [report["labels"][label]["f1"] for label in labels]


def compare(first: dict[str, dict], second: dict[str, dict], names: tuple[str, str], gold: str = "same") -> dict:
    """Per common fold, each model's scores (and the second's teachers'); the paired differences. ``gold``:
    "same" stops where the shared rows' labels differ; "second" judges both by the second run's."""
    common = sorted(set(first) & set(second))
    if not common:
        raise SystemExit(f"no fold is finished in both runs (first: {sorted(first)}, second: {sorted(second)})")
    labels = list(first[common[0]]["test_report"]["labels"])
    narrowed = {}
    for name in common:
        if first[name]["documents"]["test"] != second[name]["documents"]["test"]:
            first[name], second[name] = shared_documents(first[name], second[name], labels, gold)
            narrowed[name] = len(first[name]["documents"]["test"])
        elif gold == "second":
            first[name] = judged_by(first[name], second[name], labels)
    rows, differences = [], {names[1]: []}
    for name in common:
        fold = {"fold": name, "test_documents": len(first[name]["documents"]["test"]), "narrowed": name in narrowed,
                "test_sentences": len(first[name]["labels"]) if "labels" in first[name] else None,
                "models": {names[0]: scores(first[name]["test_report"], labels),
                           names[1]: scores(second[name]["test_report"], labels)}}
        for teacher in [] if name in narrowed else second[name].get("teachers", []):
            label = f"teacher {teacher['recipe']}"
            fold["models"][label] = scores(teacher["test_report"], labels)
            differences.setdefault(label, [])
        rows.append(fold)
        for model in differences:
            if model in fold["models"]:  # a narrowed fold shows no teacher
                differences[model].append([None if b is None or a is None else b - a
                                           for a, b in zip(fold["models"][names[0]], fold["models"][model])])
    return {"labels": labels, "folds": rows, "reference": names[0], "gold": gold, "differences": {
        model: [_mean_sd([fold[i] for fold in per_fold]) for i in range(len(labels) + 1)]
        for model, per_fold in differences.items()}}


def shared_documents(first: dict, second: dict, labels: list[str], gold: str = "same") -> tuple[dict, dict]:
    """Two records of one fold whose test documents differ, each cut to the documents both test and scored
    again there (their own temperatures and thresholds). Rows follow the sorted document ids, each document's
    sentences together (``Pool.subset``), so one record's ``row_documents`` gives every document's row count.
    With ``gold="second"`` the first record is judged by the second's labels on the same rows."""
    named = first.get("row_documents") or second.get("row_documents")
    if named is None:
        raise SystemExit(f"{first['name']} tests other documents in the two runs, and neither record says which "
                         "document each row is from (row_documents): they can be compared only on the same folds "
                         "(same data, seed and number of folds), or rerun one with this stanceclf")
    counts = Counter(named)
    shared = set(first["documents"]["test"]) & set(second["documents"]["test"])
    if not shared:
        raise SystemExit(f"{first['name']} shares no test document between the two runs: they are not the same folds")
    cut = [_narrowed(record, shared, counts, labels) for record in (first, second)]
    if cut[0]["row_documents"] != cut[1]["row_documents"]:
        raise SystemExit(f"{first['name']}: the shared test documents make other rows in the two runs (split into "
                         "other sentences?)")
    if gold == "second":
        cut[0] = judged_by(cut[0], cut[1], labels)
    if cut[0]["labels"] != cut[1]["labels"]:
        raise SystemExit(f"{first['name']}: the {len(shared)} shared test documents have other gold labels in the two "
                         "runs (were the annotations changed between them? --gold second judges both by the "
                         "second run's)")
    return cut[0], cut[1]


def judged_by(record: dict, other: dict, labels: list[str]) -> dict:
    """A fold record scored again against another record's gold labels for the same rows (its own logits,
    temperatures and thresholds)."""
    if len(record["logits"]) != len(other["labels"]) or record.get("row_documents", other.get(
            "row_documents")) != other.get("row_documents", record.get("row_documents")):
        raise SystemExit(f"{record['name']}: the two runs' test rows differ; they cannot be judged by one gold")
    gold = np.asarray(other["labels"])
    return {**record, "labels": gold.tolist(), "test_report": evaluate_logits(
        np.asarray(record["logits"]), gold, labels, record["temperatures"], record["thresholds"])}


def row_documents(record: dict, counts: Counter) -> list[str]:
    """Which document each test row of a fold record is from: its ``row_documents``, or for an earlier record
    its sorted test documents, each repeated by its row count in ``counts`` (from a record that names them)."""
    rows = record.get("row_documents")
    if rows is None:
        missing = sorted(set(record["documents"]["test"]) - set(counts))
        if missing:
            raise SystemExit(f"{record['name']}: no row count for {len(missing)} test document(s) (e.g. "
                             f"{missing[0]}): no record read names their rows")
        rows = [doc for doc in sorted(record["documents"]["test"]) for _ in range(counts[doc])]
    if len(rows) != len(record["logits"]):
        raise SystemExit(f"{record['name']}: its test documents make {len(rows)} rows by the counts, it holds "
                         f"{len(record['logits'])}: the documents were split into other sentences")
    return rows


def _narrowed(record: dict, shared: set[str], counts: Counter, labels: list[str]) -> dict:
    rows = row_documents(record, counts)
    keep = [i for i, doc in enumerate(rows) if doc in shared]
    logits, gold = np.asarray(record["logits"])[keep], np.asarray(record["labels"])[keep]
    return {**record, "documents": {**record["documents"], "test": sorted(shared)},
            "row_documents": [rows[i] for i in keep], "logits": logits.tolist(), "labels": gold.tolist(),
            "test_report": evaluate_logits(logits, gold, labels, record["temperatures"], record["thresholds"])}


def _mean_sd(values) -> tuple[float | None, float | None]:
    """The library's mean and sample sd over folds (undefined figures left out), as a pair."""
    stats = mean_sd(values)
    return stats["mean"], stats["sd"]


def markdown(result: dict, command: str, title: str = "", notes: tuple[str, ...] = ()) -> str:
    labels, reference = result["labels"], result["reference"]
    header = "| macro F1 | " + " | ".join(f"{label} F1" for label in labels) + " |"
    lines = [*([f"# {title}", ""] if title else []), *[line for note in notes for line in (note, "")],
             f"Command: `{command}`", "",
             f"{len(result['folds'])} fold(s) finished in both runs"
             + (", compared on the test documents both hold (the folds marked *: one run tests more)"
                if any(fold["narrowed"] for fold in result["folds"]) else ", with the same test documents")
             + ("; both judged by the gold labels of the second run" if result.get("gold") == "second" else "")
             + ".", "",
             "| fold | test docs | test sentences | model " + header, "|---|---:|---:|---|" + "---:|" * (len(labels) + 1)]
    for fold in result["folds"]:
        for model, values in fold["models"].items():
            lines.append(f"| {fold['fold']}{'*' if fold['narrowed'] else ''} | {fold['test_documents']} | "
                         f"{fold['test_sentences'] or '-'} | {model} | "
                         + " | ".join(_figure(v) for v in values) + " |")
    lines += ["", f"Paired difference from {reference} (mean over folds, ± sample sd where there are two or more):",
              "", "| model " + header, "|---|" + "---:|" * (len(labels) + 1)]
    for model, stats in result["differences"].items():
        lines.append(f"| {model} | " + " | ".join(_difference(*s) for s in stats) + " |")
    return "\n".join(lines) + "\n"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _difference(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:+.3f}" + ("" if sd is None else f" ± {sd:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first", type=Path, help="the reference: a stanceclf cross-validate --out folder")
    parser.add_argument("second", type=Path, help="the run to compare with it, on the same folds")
    parser.add_argument("--names", nargs=2, default=None, metavar=("FIRST", "SECOND"),
                        help="names for the two runs in the tables (default: their recipes' names)")
    parser.add_argument("--title", default="", help="a heading for the Markdown")
    parser.add_argument("--note", action="append", default=[], help="a paragraph above the tables (repeatable): "
                        "how the runs were made, what they show")
    parser.add_argument("--gold", choices=("same", "second"), default="same",
                        help="whose gold labels judge the shared test rows: 'same' stops where they differ; "
                        "'second' scores the first run's predictions against the second run's (corrected) labels")
    parser.add_argument("--write", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    first, second = fold_records(args.first), fold_records(args.second)
    names = tuple(args.names) if args.names else tuple(
        _recipe_name(folder) for folder in (args.first, args.second))
    # The tables' command: the heading and notes are prose, left out so that it stays readable.
    shown = [str(args.first), str(args.second), *(["--names", *names] if args.names else []),
             *(["--gold", args.gold] if args.gold != "same" else [])]
    command = "python benchmarks/crossval_compare.py " + shlex.join(shown)
    publish(markdown(compare(first, second, names, args.gold), command, args.title, tuple(args.note)), args.write)


def _recipe_name(folder: Path) -> str:
    report = folder / "report.json"
    return json.loads(report.read_text(encoding="utf-8"))["recipe"] if report.exists() else folder.name


if __name__ == "__main__":
    main()
