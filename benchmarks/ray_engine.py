"""The Ray engine against the local engine on the shipped model: same bytes? how long?

    python benchmarks/ray_engine.py --documents 60 --write benchmarks/results/ray_engine.md

Scores the first N SemEval articles in ../shared (read at run time, never copied) as a
JSONL corpus, three ways, each into its own output:
  1. the local engine with its default chunks (1,024 sentences): the reference
  2. the local engine with 256-sentence chunks: what other forward-pass batches do to scores
  3. the Ray engine on a new local Ray (all CPUs of this machine, one actor per CPU)
and counts the rows that differ from the reference in any field, the largest score
difference and the label decisions that differ. Wall times include
Ray's start and the actors' model loads; on one small machine they say what the engine
costs, not what a cluster gains.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from report import publish  # benchmarks/report.py, beside this script

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpus"


def write_corpus(path: Path, limit: int) -> int:
    files = sorted((SHARED / "semeval2025-en").glob("*.txt"))[:limit]
    if len(files) < limit:
        raise SystemExit(f"only {len(files)} articles under {SHARED / 'semeval2025-en'}")
    with open(path, "w", encoding="utf-8") as handle:
        for file in files:
            handle.write(json.dumps({"id": file.stem, "text": file.read_text(encoding="utf-8")}) + "\n")
    return len(files)


def differences(reference: Path, other: Path) -> tuple[int, float, int]:
    """Rows differing in any field, the largest score difference, and label decisions that differ."""
    with open(reference, encoding="utf-8") as a, open(other, encoding="utf-8") as b:
        left, right = [json.loads(x) for x in a], [json.loads(y) for y in b]
    if [(r["doc_id"], r["sentence_index"]) for r in left] != [(r["doc_id"], r["sentence_index"]) for r in right]:
        raise SystemExit(f"{other.name} does not have the reference's rows in the reference's order")
    scores = [key for key in left[0] if key.startswith("score_")] if left else []
    largest = max((abs(x[key] - y[key]) for x, y in zip(left, right) for key in scores), default=0.0)
    flips = sum(len(set(x["labels"]) ^ set(y["labels"])) for x, y in zip(left, right))
    return sum(x != y for x, y in zip(left, right)), largest, flips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=60)
    parser.add_argument("--write", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from stanceclf.infer.predict import load
    from stanceclf.infer.ray_engine import score_corpus_on_ray
    from stanceclf.infer.scoring import score_corpus

    model = load()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        documents = write_corpus(folder / "corpus.jsonl", args.documents)
        runs = [("local engine, chunks of 1,024 sentences (reference)", score_corpus, {}),
                ("local engine, chunks of 256 sentences", score_corpus, {"chunk_sentences": 256}),
                ("ray engine, new local Ray, one actor per CPU", score_corpus_on_ray, {"address": "local"})]
        results = []
        for index, (name, run, options) in enumerate(runs):
            out = folder / f"out{index}.jsonl"
            started = time.time()
            summary = run([folder / "corpus.jsonl"], out, model, progress=False, **options)
            results.append((name, time.time() - started, summary.sentences, out))
        reference = results[0][3]
        lines = [f"# Ray engine against the local engine ({datetime.date.today()})", "",
                 "Command: `python benchmarks/ray_engine.py "
                 f"--documents {args.documents}{' --write ' + str(args.write) if args.write else ''}`", "",
                 f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; shipped model "
                 f"(`models/claim-types`), torch fp32; {documents} SemEval articles, {results[0][2]} sentences.", "",
                 "| run | wall s | rows differing from the reference | largest score difference | label decisions "
                 "differing | output bytes identical |", "|---|---|---|---|---|---|"]
        for name, seconds, _, out in results:
            rows, largest, flips = differences(reference, out)
            same = "yes" if out.read_bytes() == reference.read_bytes() else "no"
            lines.append(f"| {name} | {seconds:.1f} | {rows} | {largest:.6f} | {flips} | {same} |")
    report = "\n".join(lines) + "\n"
    publish(report, args.write)


if __name__ == "__main__":
    main()
