"""Do our sentence-level ``propaganda`` labels agree with PTC's own sentence units?

Our labels come from the pipeline the ptc-propaganda recipe uses:
``read_annotations("ptc", train, labels=["propaganda"], label_map={"*": "propaganda"}, strict=False)``
then :func:`stanceclf.data.dataset.sentence_examples` with the ``ptc-propaganda`` schema and
``BuildConfig()`` (syntok, ``min_overlap_chars=1``). PTC's units are its lines: every
article is stored one sentence per line, and the corpus' sentence-level task (SLC) calls a
line positive when it contains a propaganda fragment.

The reference is computed independently of our reader. The ``labels.tsv`` files are parsed
here, and a PTC line is positive when any technique span shares at least one character with
the line's content (the line without its surrounding whitespace). Blank lines are not units
on either side. The title (line 1) is a unit, as in SLC. A span past the end of its text (one
in train) overlaps no line.

What is compared, and why it is fair:

1. **Per PTC line** (the main figure). Our label for a line is 1 when at least one of our
   positive sentences overlaps the line by at least one character. Since a newline always ends
   one of our sentences, each of our sentences lies inside exactly one line. This OR is
   therefore the only sensible way to lift our labels to PTC's units, and it is the same rule
   PTC uses (any fragment in the unit). Disagreement here means that the pipeline lost or
   moved a span, for example a span that touches only whitespace between two of our sentences,
   or a span that the lenient reader skipped. The per-line comparison is not affected by how
   finely we split.
2. **Per our sentence** (the cost of finer units). Each of our sentences gets the label of the
   PTC line that contains it, and this is compared with its own label. When a positive line is
   split into several sentences and the span falls in only one of them, the others become
   negatives. This is a deliberate property of our units, not a defect. This view shows how many
   training examples it changes.

Exact coincidence: how many of our sentences have exactly a PTC line's content as their
``[start, end)``, and how many PTC lines are reproduced by exactly one of our sentences.
No text of the corpus is printed or written; only counts.

Usage (from the repository root)::

    python benchmarks/ptc_sentence_agreement.py [--ptc-dir ../shared/corpus/ptc] [--split train] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stanceclf.data.dataset import BuildConfig, sentence_examples  # noqa: E402
from stanceclf.data.readers import ReadReport, read_annotations  # noqa: E402
from stanceclf.data.schema import load_schema  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "ptc_sentence_agreement.md"
DEFAULT_PTC = REPO.parent / "shared" / "corpus" / "ptc"


def ptc_lines(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` of the content of every non-blank line (surrounding whitespace excluded)."""
    lines, offset = [], 0
    for line in text.split("\n"):
        if line.strip():
            start = offset + len(line) - len(line.lstrip())
            lines.append((start, offset + len(line.rstrip())))
        offset += len(line) + 1
    return lines


def raw_spans(tsv: Path) -> list[tuple[int, int]]:
    """Technique spans straight from a PTC ``labels.tsv`` (id, technique, begin, end)."""
    if not tsv.exists():
        return []
    spans = []
    for row in tsv.read_text(encoding="utf-8").splitlines():
        if row.strip():
            _, _, begin, end = row.split("\t")
            spans.append((int(begin), int(end)))
    return spans


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return min(a[1], b[1]) - max(a[0], b[0]) >= 1


def kappa(x: list[int], y: list[int]) -> float:
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(x, y))


def measure(ptc_dir: Path, split: str) -> dict:
    folder = ptc_dir / split
    schema = load_schema("ptc-propaganda")
    config = BuildConfig()
    report = ReadReport()
    t0 = time.perf_counter()
    documents = read_annotations("ptc", folder, labels=schema.label_names, label_map={"*": "propaganda"},
                                 strict=False, report=report)
    line_ref, line_ours, sent_ref, sent_ours = [], [], [], []
    n_sentences = exact_sentences = exact_lines = multi_sentence_lines = 0
    line_disagreements = []
    for doc in documents:
        examples = sentence_examples(doc, schema, config)
        lines = ptc_lines(doc.text)
        spans = raw_spans(folder / f"{doc.doc_id}.labels.tsv")
        line_set = set(lines)
        # Which line holds each of our sentences (a newline always ends a sentence, so exactly one).
        per_line: dict[int, list[dict]] = {i: [] for i in range(len(lines))}
        line_index = 0
        for ex in examples:
            while lines[line_index][1] < ex["end"]:
                line_index += 1
            assert lines[line_index][0] <= ex["start"] and ex["end"] <= lines[line_index][1], "sentence crosses a line"
            per_line[line_index].append(ex)
        n_sentences += len(examples)
        exact_sentences += sum((ex["start"], ex["end"]) in line_set for ex in examples)
        for i, line in enumerate(lines):
            ref = int(any(overlaps(line, s) for s in spans))
            ours = int(any(ex["labels"][0] and overlaps(line, (ex["start"], ex["end"])) for ex in per_line[i]))
            line_ref.append(ref)
            line_ours.append(ours)
            if ref != ours:
                line_disagreements.append((doc.doc_id, i, ref, ours))
            if len(per_line[i]) == 1 and (per_line[i][0]["start"], per_line[i][0]["end"]) == line:
                exact_lines += 1
            multi_sentence_lines += len(per_line[i]) > 1
            for ex in per_line[i]:
                sent_ref.append(ref)
                sent_ours.append(ex["labels"][0])
    elapsed = time.perf_counter() - t0

    def agreement(ref, ours):
        return {"n": len(ref), "accuracy": sum(a == b for a, b in zip(ref, ours)) / len(ref),
                "kappa": kappa(ref, ours), "pos_ref": sum(ref) / len(ref), "pos_ours": sum(ours) / len(ours),
                "ref_pos_ours_neg": sum(a and not b for a, b in zip(ref, ours)),
                "ref_neg_ours_pos": sum(b and not a for a, b in zip(ref, ours))}

    # Skip messages name the file and offsets; one that quotes text (an offset mismatch) is cut to its code.
    skipped = [m.replace(str(folder.resolve()) + os.sep, "").replace(str(folder) + os.sep, "") for m in report.skipped]
    skipped = [m if "'" not in m else m.split("]")[0] + "]" for m in skipped]
    return {"documents": len(documents), "spans": report.spans, "skipped": skipped,
            "sentences": n_sentences, "lines": len(line_ref), "exact_sentences": exact_sentences,
            "exact_lines": exact_lines, "multi_sentence_lines": multi_sentence_lines,
            "per_line": agreement(line_ref, line_ours), "per_sentence": agreement(sent_ref, sent_ours),
            "line_disagreements": line_disagreements, "seconds": elapsed}


def render(r: dict, split: str, command: str) -> str:
    def row(name, a):
        return (f"| {name} | {a['n']:,} | {a['accuracy']:.4f} | {a['kappa']:.4f} | {a['pos_ref']:.4f} "
                f"| {a['pos_ours']:.4f} | {a['ref_pos_ours_neg']:,} | {a['ref_neg_ours_pos']:,} |")

    lines = [
        f"# Our sentence labels vs PTC's sentence lines (PTC {split}, label `propaganda`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.machine()}, "
        f"nproc {os.cpu_count()}, Python {platform.python_version()}; run time {r['seconds']:.1f} s.",
        "",
        "Pipeline: `read_annotations('ptc', ..., label_map={'*': 'propaganda'}, strict=False)`, then "
        "`sentence_examples` with the `ptc-propaganda` schema and `BuildConfig()` (syntok, min_overlap_chars=1). "
        "Reference: a non-blank PTC line (title included) is positive when a technique span from the raw "
        "`labels.tsv` overlaps its content by at least one character. See the script's docstring for why "
        "these two comparisons are the fair ones.",
        "",
        f"- documents: {r['documents']:,}; spans read: {r['spans']:,}; skipped by the lenient reader: "
        f"{len(r['skipped'])}" + (f" ({'; '.join(r['skipped'])})" if r['skipped'] else ""),
        f"- our sentences: {r['sentences']:,}; PTC lines (non-blank): {r['lines']:,}",
        f"- our sentences that coincide exactly with a PTC line: {r['exact_sentences']:,} of {r['sentences']:,} "
        f"({r['exact_sentences'] / r['sentences']:.1%})",
        f"- PTC lines reproduced by exactly one of our sentences: {r['exact_lines']:,} of {r['lines']:,} "
        f"({r['exact_lines'] / r['lines']:.1%}); lines we split into several sentences: "
        f"{r['multi_sentence_lines']:,}",
        "",
        "| unit | n | accuracy | Cohen's kappa | positive rate PTC | positive rate ours "
        "| PTC pos, ours neg | PTC neg, ours pos |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        row("per PTC line (ours: any positive sentence in the line)", r["per_line"]),
        row("per our sentence (PTC: label of the line holding it)", r["per_sentence"]),
        "",
    ]
    if r["line_disagreements"]:
        lines += ["Lines where the per-line labels disagree (article, 0-based index among non-blank lines, "
                  "PTC, ours):", ""]
        lines += [f"- {doc} line {i}: PTC {a}, ours {b}" for doc, i, a, b in r["line_disagreements"][:30]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ptc-dir", type=Path, default=None,
                        help="PTC corpus folder (default ../shared/corpus/ptc from the repo root)")
    parser.add_argument("--split", default="train", choices=["train", "dev"])
    parser.add_argument("--write", action="store_true", help=f"also write {RESULTS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    ptc_dir = args.ptc_dir if args.ptc_dir is not None else DEFAULT_PTC
    if not (ptc_dir / args.split).is_dir():
        sys.exit(f"PTC folder not found: {ptc_dir / args.split}")
    command = "python benchmarks/ptc_sentence_agreement.py" + "".join(
        " " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = render(measure(ptc_dir, args.split), args.split, command)
    print(text)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
