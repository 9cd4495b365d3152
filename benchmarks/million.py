"""One million sentences through `stanceclf score`: throughput, memory over the run, a kill -9 and a resume.

    python benchmarks/million.py --model claim-types-student --backend auto \
        --write benchmarks/results/million-student.md
    python benchmarks/million.py --model claim-types --backend auto --sentences 20000 --ray \
        --write benchmarks/results/million-default-slice.md

The corpus is every record of ../shared/corpus/unlabelled/ (read at run time; about 880,000 sentences), each
id prefixed by its file, then the war-news records again under new ids until at least --sentences sentences
(a copy written to a temporary folder, never to the repo). One `stanceclf score` run writes JSONL; it is killed
with SIGKILL once its output holds --kill-at of the expected rows, and the same command is run again, which
resumes. The resident set of the scoring process is sampled every 2 s. Afterwards every (document, sentence)
row must be there exactly once. With ``--ray`` the same corpus is scored again with ``--engine ray`` (a new local
Ray, one actor per CPU) and its rows are compared with the resumed local run's, field by field.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inference import SHARED
from ray_engine import differences
from report import publish

from stanceclf.machine import cpu_name, described_flags

POOL = SHARED / "unlabelled"


def write_corpus(path: Path, minimum: int) -> tuple[int, int]:
    """The pool's records, then the war news again, until about ``minimum`` sentences (counted roughly from
    the text, the splitter decides): ``(records, approximate sentences)``."""
    records = sentences = 0
    with open(path, "w", encoding="utf-8") as out:
        for source in sorted(POOL.glob("*.jsonl")):
            for line in open(source, encoding="utf-8"):
                record = json.loads(line)
                out.write(json.dumps({"id": f"{source.stem}/{record['id']}", "text": record["text"]}) + "\n")
                records += 1
                sentences += record["text"].count(". ") + 1
        again = POOL / "ukraine-war-news-2022.jsonl"
        for line in open(again, encoding="utf-8"):
            if sentences >= minimum:
                break
            record = json.loads(line)
            out.write(json.dumps({"id": f"again/{record['id']}", "text": record["text"]}) + "\n")
            records += 1
            sentences += record["text"].count(". ") + 1
    return records, sentences


def rows_in(path: Path) -> int:
    """Rows on disk: the finished file, or the one an unfinished run writes (``OUT.partial``)."""
    partial = path.with_name(path.name + ".partial")
    path = path if path.exists() else partial
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def run(command: list[str], out: Path, kill_at_rows: int | None) -> dict:
    """Run ``command``; sample its resident set; kill it with SIGKILL once ``out`` holds ``kill_at_rows``."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    samples, killed = [], False
    while process.poll() is None:
        time.sleep(2)
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            samples.append(int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1]) / 1024)
        except (OSError, StopIteration):
            pass
        if kill_at_rows and len(samples) % 5 == 0 and rows_in(out) >= kill_at_rows:  # counted every 10 s
            process.send_signal(signal.SIGKILL)
            killed = True
    stderr = process.stderr.read()
    process.wait()
    if not killed and process.returncode != 0:
        raise SystemExit(f"score failed (exit {process.returncode}):\n{stderr[-3000:]}")
    return {"seconds": time.perf_counter() - started, "killed": killed, "rss": samples, "rows": rows_in(out)}


def check_rows(out: Path) -> dict:
    """Every row once: (doc_id, start) unique; how many documents."""
    seen, documents, duplicates = set(), set(), 0
    with open(out, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            key = (row["doc_id"], row["start"])
            duplicates += key in seen
            seen.add(key)
            documents.add(row["doc_id"])
    return {"rows": len(seen) + duplicates, "unique": len(seen), "duplicates": duplicates, "documents": len(documents)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="claim-types-student")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--sentences", type=int, default=1_000_000)
    parser.add_argument("--kill-at", type=float, default=0.5, help="share of the rows at which to kill (0: never)")
    parser.add_argument("--ray", action="store_true", help="score the same corpus on a new local Ray and compare")
    parser.add_argument("--keep", type=Path, help="keep the work folder here")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="stanceclf-million-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.jsonl"
    records, approximate = write_corpus(corpus, args.sentences)
    if args.sentences < approximate * 0.9:  # a slice: the first records only
        lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
        share = args.sentences / approximate
        corpus.write_text("".join(lines[: max(1, int(len(lines) * share))]), encoding="utf-8")
        records, approximate = int(len(lines) * share), args.sentences
    out = work / "scores.jsonl"
    command = [sys.executable, "-m", "stanceclf", "score", str(corpus), "--out", str(out), "--model", args.model,
               "--backend", args.backend, "--no-progress"]
    first = run(command, out, int(approximate * args.kill_at) if args.kill_at else None)
    second = run(command, out, None) if first["killed"] else None
    on_ray = None
    if args.ray:
        ray_out = work / "scores-ray.jsonl"
        on_ray = run([*command[:6], str(ray_out), *command[7:], "--engine", "ray", "--address", "local"], ray_out, None)
        on_ray["rows"], on_ray["largest"], on_ray["flips"] = differences(out, ray_out)
        on_ray["identical"] = ray_out.read_bytes() == out.read_bytes()
    rows = check_rows(out)
    seconds = first["seconds"] + (second["seconds"] if second else 0)
    rss = first["rss"] + (second["rss"] if second else [])
    chosen = json.loads(subprocess.run(
        [sys.executable, "-c", f"import json; from stanceclf import load; print(json.dumps(load({args.model!r}, "
                               f"fast={args.backend!r}).backend))"], capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout.strip().splitlines()[-1])
    lines = ["# One run of `stanceclf score` over the unlabelled pool", "",
             "Command: `python benchmarks/million.py " + shlex.join(sys.argv[1:]) + "`", "",
             f"Date {datetime.date.today()}; {cpu_name()}, {os.cpu_count()} cores; CPU flags: {described_flags()}"
             + (f"; ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}" if os.environ.get("ONEDNN_MAX_CPU_ISA") else "")
             + f". Model `{args.model}`, `--backend {args.backend}` (ran `{chosen}`), 2 threads, JSONL output.", "",
             f"Input: {records:,} documents of `../shared/corpus/unlabelled/` (the war news partly twice, under new ids).", "",
             "| what | value |", "|---|---:|",
             f"| sentences scored (rows) | {rows['rows']:,} |",
             f"| documents | {rows['documents']:,} |",
             f"| rows duplicated after the resume | {rows['duplicates']} |",
             f"| wall time, both runs (process starts, splitting, writing) | {seconds / 60:.1f} min |",
             f"| sentences/s over the whole job | {rows['rows'] / seconds:.0f} |",
             f"| peak RSS of the scoring process | {max(rss):.0f} MB |",
             f"| RSS at 10%, 50%, 90% of the samples | {rss[len(rss) // 10]:.0f}, {rss[len(rss) // 2]:.0f}, "
             f"{rss[len(rss) * 9 // 10]:.0f} MB |",
             f"| output size | {out.stat().st_size / 1e6:.0f} MB |"]
    if second:
        lines += [f"| killed with SIGKILL after | {first['seconds'] / 60:.1f} min, {first['rows']:,} rows on disk |",
                  f"| resumed run | {second['seconds'] / 60:.1f} min |"]
    if on_ray:
        lines += [f"| `--engine ray` on the same corpus (new local Ray, its start included) | "
                  f"{on_ray['seconds'] / 60:.1f} min |",
                  f"| its rows differing from the local run's, in any field | {on_ray['rows']:,} |",
                  f"| its largest score difference; label decisions differing | {on_ray['largest']:.6f}; "
                  f"{on_ray['flips']} |",
                  f"| its output byte for byte the local run's | {'yes' if on_ray['identical'] else 'no'} |"]
    publish("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
