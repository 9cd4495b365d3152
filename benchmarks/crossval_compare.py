"""Two cross-validations on the same folds, compared fold by fold: paired differences, not two means.

    python benchmarks/crossval_compare.py runs/crossval/kfold runs/crossval/student \
        --names "previous default's recipe" "distilled student" \
        --write benchmarks/results/claim-types-student-crossval.md

Each folder is the ``--out`` of a ``stanceclf cross-validate`` run. Folds are matched by name and
must hold the same test documents, or the script stops. Only folds finished in both runs are
compared, so a partial run (``--only``) can be set against a finished one. Where the second run is
of a ``[distill]`` recipe, the teachers trained in each of its folds are shown too.

Fold to fold, the test documents change much more than the models do (the reference's macro F1
ranges over 0.07 between folds), so the paired difference per fold says more than a difference of
means.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from report import publish

from stanceclf.train.fold_reports import mean_sd


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


def compare(first: dict[str, dict], second: dict[str, dict], names: tuple[str, str]) -> dict:
    """Per common fold, each model's scores (and the second's teachers'); the paired differences."""
    common = sorted(set(first) & set(second))
    if not common:
        raise SystemExit(f"no fold is finished in both runs (first: {sorted(first)}, second: {sorted(second)})")
    for name in common:
        if first[name]["documents"]["test"] != second[name]["documents"]["test"]:
            raise SystemExit(f"{name} tests other documents in the two runs: they are not the same folds "
                             "(same data, seed and number of folds are needed)")
    labels = list(first[common[0]]["test_report"]["labels"])
    rows, differences = [], {names[1]: []}
    for name in common:
        fold = {"fold": name, "test_documents": len(first[name]["documents"]["test"]),
                "models": {names[0]: scores(first[name]["test_report"], labels),
                           names[1]: scores(second[name]["test_report"], labels)}}
        for teacher in second[name].get("teachers", []):
            label = f"teacher {teacher['recipe']}"
            fold["models"][label] = scores(teacher["test_report"], labels)
            differences.setdefault(label, [])
        rows.append(fold)
        for model in differences:
            differences[model].append([None if b is None or a is None else b - a
                                       for a, b in zip(fold["models"][names[0]], fold["models"][model])])
    return {"labels": labels, "folds": rows, "reference": names[0], "differences": {
        model: [_mean_sd([fold[i] for fold in per_fold]) for i in range(len(labels) + 1)]
        for model, per_fold in differences.items()}}


def _mean_sd(values) -> tuple[float | None, float | None]:
    """The library's mean and sample sd over folds (undefined figures left out), as a pair."""
    stats = mean_sd(values)
    return stats["mean"], stats["sd"]


def markdown(result: dict, command: str, title: str = "", notes: tuple[str, ...] = ()) -> str:
    labels, reference = result["labels"], result["reference"]
    header = "| macro F1 | " + " | ".join(f"{label} F1" for label in labels) + " |"
    lines = [*([f"# {title}", ""] if title else []), *[line for note in notes for line in (note, "")],
             f"Command: `{command}`", "",
             f"{len(result['folds'])} fold(s) finished in both runs, with the same test documents.", "",
             "| fold | test docs | model " + header, "|---|---:|---|" + "---:|" * (len(labels) + 1)]
    for fold in result["folds"]:
        for model, values in fold["models"].items():
            lines.append(f"| {fold['fold']} | {fold['test_documents']} | {model} | "
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
    parser.add_argument("--write", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    first, second = fold_records(args.first), fold_records(args.second)
    names = tuple(args.names) if args.names else tuple(
        _recipe_name(folder) for folder in (args.first, args.second))
    # The tables' command: the heading and notes are prose, left out so that it stays readable.
    shown = [str(args.first), str(args.second), *(["--names", *names] if args.names else [])]
    command = "python benchmarks/crossval_compare.py " + shlex.join(shown)
    publish(markdown(compare(first, second, names), command, args.title, tuple(args.note)), args.write)


def _recipe_name(folder: Path) -> str:
    report = folder / "report.json"
    return json.loads(report.read_text(encoding="utf-8"))["recipe"] if report.exists() else folder.name


if __name__ == "__main__":
    main()
