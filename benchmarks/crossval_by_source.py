"""Cross-validation figures per source: the pooled out-of-fold predictions of each run, split by where each
test document comes from.

    python benchmarks/crossval_by_source.py benchmarks/results/crossval/claim-types-teacher-lora-grown \
        --names "grown data" --write benchmarks/results/claim-types-by-source-grown.md

A document's source: ``UA`` (``EN_UA_*``), ``CC`` (``EN_CC_*``), ``PTC`` (``article*``), or the pool file its
annotation names (``labels/claim-types/*.jsonl`` records with a ``path``: the war-news file or the AllSides
file); anything else is ``other``. Each fold's rows keep its own temperatures and thresholds, as in the
cross-validation report's pooled figures. A run whose fold records do not say which document each row is
from (``row_documents``, written since 2026-12-06) is read through the row counts of a run that does
(``--rows-from``): its rows follow the sorted test documents, each document's sentences together.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections import Counter
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
from crossval_compare import fold_records, row_documents  # benchmarks/crossval_compare.py, beside this script
from report import publish

from stanceclf.model.metrics import format_metric
from stanceclf.train.fold_reports import pooled_report

REPO = Path(__file__).resolve().parents[1]
PATTERNS = {"UA": "EN_UA_*", "CC": "EN_CC_*", "PTC": "article*"}
POOL_FILES = {"ukraine-war-news-2022.jsonl": "war news (pool)",
              "allsides-geopolitics-climate-2012-2020.jsonl": "AllSides (pool)"}


def pool_sources(annotation_files: list[Path]) -> dict[str, str]:
    """Documents that live in a pool file, by the file their annotation names."""
    sources = {}
    for path in annotation_files:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            pool = Path(record.get("path") or "").name
            if pool in POOL_FILES:
                sources[record["doc_id"]] = POOL_FILES[pool]
    return sources


def source_of(doc: str, pooled: dict[str, str]) -> str:
    named = [name for name, pattern in PATTERNS.items() if fnmatchcase(doc, pattern)]
    return named[0] if named else pooled.get(doc, "other")


def by_source(records: dict[str, dict], counts: Counter, pooled: dict[str, str]) -> dict[str, dict]:
    """Per source, the pooled report of its rows over all folds."""
    labels = list(next(iter(records.values()))["test_report"]["labels"])
    parts: dict[str, list[dict]] = {}
    for record in records.values():
        rows = row_documents(record, counts)
        sources = np.array([source_of(doc, pooled) for doc in rows])
        for source in sorted(set(sources)):
            keep = np.flatnonzero(sources == source)
            parts.setdefault(source, []).append({
                **record, "logits": np.asarray(record["logits"])[keep].tolist(),
                "labels": np.asarray(record["labels"])[keep].tolist(),
                "documents": sorted({rows[i] for i in keep})})
    result = {}
    for source, subsets in sorted(parts.items()):
        report = pooled_report(subsets, labels)
        report["documents"] = sum(len(s["documents"]) for s in subsets)
        result[source] = report
    return result


def markdown(runs: dict[str, dict[str, dict]], command: str, title: str, folds: list[str] = ()) -> str:
    labels = list(next(iter(next(iter(runs.values())).values()))["labels"])
    lines = [f"# {title}", "", f"Command: `{command}`", "", *([f"Folds: {', '.join(folds)}.", ""] if folds else []),
             "Pooled out-of-fold predictions per source over the folds finished in every run, each fold's rows "
             "under its own temperatures and thresholds. F1 (precision) per label.", "",
             "| run | source | docs | sentences | macro F1 | " + " | ".join(labels) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(labels)]
    for name, sources in runs.items():
        for source, report in sources.items():
            cells = [f"{format_metric(report['labels'][label]['f1'])} ({format_metric(report['labels'][label]['precision'])})"
                     for label in labels]
            lines.append(f"| {name} | {source} | {report['documents']} | {report['examples']} | "
                         f"{format_metric(report['macro']['f1'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="stanceclf cross-validate --out folders")
    parser.add_argument("--names", nargs="+", help="a name per run (default: the folder names)")
    parser.add_argument("--rows-from", type=Path, help="a run whose fold records name each row's document")
    parser.add_argument("--annotations", nargs="+", type=Path,
                        default=sorted((REPO / "labels" / "claim-types").glob("*.jsonl")))
    parser.add_argument("--title", default="Cross-validation per source")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    names = args.names or [run.name for run in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit(f"{len(names)} names for {len(args.runs)} runs")
    counts = Counter()
    for record in fold_records(args.rows_from).values() if args.rows_from else []:
        counts.update(record.get("row_documents") or [])
    pooled = pool_sources(args.annotations)
    records = [fold_records(run) for run in args.runs]
    common = sorted(set.intersection(*(set(r) for r in records)))  # the same folds, so the rows compare
    if not common:
        raise SystemExit("no fold is finished in every run")
    runs = {name: by_source({fold: r[fold] for fold in common}, counts, pooled) for name, r in zip(names, records)}
    shown = [str(run) for run in args.runs] + (["--rows-from", str(args.rows_from)] if args.rows_from else [])
    command = "python benchmarks/crossval_by_source.py " + shlex.join(shown + (["--names", *names] if args.names else []))
    publish(markdown(runs, command, args.title, common), args.write)


if __name__ == "__main__":
    main()
