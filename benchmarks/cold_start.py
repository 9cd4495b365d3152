"""Cold start of ``stanceclf classify`` on one seed article: process start to first output, median of N runs.

    python benchmarks/cold_start.py --runs 9 --tree /tmp/stanceclf-before --tree . \
        --write benchmarks/results/cold_start.md

``--merge-each-run`` gives every run a cache folder of its own that holds only the assembled bases, so
that a LoRA adapter model (the MPNet default) is merged in every run, as on its first load on a machine;
without it, runs after the first read the merged weights from the cache (see stanceclf/model/adapter.py).

Each ``--tree`` is a checkout of stanceclf, put first on PYTHONPATH of its runs (make one of an older
commit with ``git archive COMMIT | tar -x -C DIR``). The trees' runs alternate, so that the load of a
shared machine falls on all of them alike. Besides the wall time to the first line on stdout and to the
end, each run of a tree is timed in phases in-process (``--phases``): CLI import, torch import, model
load (everything ``load()`` imports beyond torch included), first ``classify``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import tempfile
import subprocess
import sys
import time
from pathlib import Path

from report import publish  # benchmarks/report.py, beside this script

from stanceclf.machine import cpu_name, described_flags

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "examples" / "seeds" / "000_1231937baff740f5.txt"

# Runs in a fresh interpreter: the phases of a cold `classify`, as the CLI goes through them.
PHASES = """
import json, sys, time
start = time.perf_counter()
marks = {}
import stanceclf.cli
marks["cli import"] = time.perf_counter()
if sys.argv[3] in ("torch", "bf16", "onnx"):  # the others may run without it
    import torch
    marks["torch import"] = time.perf_counter()
from stanceclf.infer.predict import load
model = load(sys.argv[1], fast=sys.argv[3])
marks["model load"] = time.perf_counter()
model.classify(open(sys.argv[2], encoding="utf-8").read())
marks["first classify"] = time.perf_counter()
previous, out = start, {}
for name, at in marks.items():
    out[name], previous = at - previous, at
out["transformers imported"] = "transformers" in sys.modules
out["torch imported"] = "torch" in sys.modules
print(json.dumps(out))
"""


def environment(tree: Path, cache: Path | None = None) -> dict:
    extra = {} if cache is None else {"STANCECLF_CACHE": str(cache)}
    return {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def fresh_cache(folder: Path) -> Path:
    """An empty cache folder but for the assembled bases (a link to the user's): nothing merged, nothing measured."""
    from stanceclf.cache import cache_dir

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "bases").symlink_to(cache_dir() / "bases", target_is_directory=True)
    return folder


def time_cli(tree: Path, model: str, cache: Path | None, backend: str = "torch") -> tuple[float, float, float]:
    """(seconds to the first stdout line, seconds to exit, CPU seconds) of one `stanceclf classify` process.
    CPU time (user + system) suffers less than wall time from other jobs on a shared machine."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "stanceclf.cli", "classify", str(SEED), "--model", model,
                                "--backend", backend],
                               cwd=tree, env=environment(tree, cache), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    process.stdout.readline()
    first = time.perf_counter() - started
    process.stdout.read()
    if process.wait() != 0:
        raise SystemExit(f"classify failed in {tree}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return first, time.perf_counter() - started, cpu


def time_phases(tree: Path, model: str, cache: Path | None, backend: str = "torch") -> dict:
    result = subprocess.run([sys.executable, "-c", PHASES, model, str(SEED), backend], cwd=tree, env=environment(tree, cache),
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", type=Path,
                        help="a stanceclf checkout (repeatable; default: this one)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--phases", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--model", default="claim-types", help="a shipped model's name or a model directory")
    parser.add_argument("--merge-each-run", action="store_true",
                        help="a fresh cache folder per run: an adapter model is merged every time (its first load)")
    parser.add_argument("--backend", default="torch", help="the classify verb's --backend (e.g. int8, auto)")
    parser.add_argument("--write", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in (args.tree or [ROOT])]
    model = args.model
    scratch = Path(tempfile.mkdtemp(prefix="cold-start-cache-"))

    def cache() -> Path | None:
        return fresh_cache(scratch / "cache") if args.merge_each_run else None
    load_before = os.getloadavg()[0]
    runs: dict[Path, list] = {tree: [] for tree in trees}
    phases: dict[Path, list] = {tree: [] for tree in trees}
    for _ in range(args.runs):
        for tree in trees:
            runs[tree].append(time_cli(tree, model, cache(), args.backend))
            if args.phases:
                phases[tree].append(time_phases(tree, model, cache(), args.backend))
    shutil.rmtree(scratch, ignore_errors=True)
    lines = ["# Cold start of `stanceclf classify`", "",
             "Command: `python benchmarks/cold_start.py --runs "
             f"{args.runs} --model {model}" + " --merge-each-run" * args.merge_each_run
             + (f" --backend {args.backend}" if args.backend != "torch" else "")
             + "".join(f" --tree {tree}" for tree in (args.tree or [])) + "`",
             f"Date {datetime.date.today()}, {cpu_name()}, {os.cpu_count()} cores; CPU flags: {described_flags()}; Python "
             f"{platform.python_version()}. `stanceclf classify {SEED.relative_to(ROOT)} --model {model} "
             f"--backend {args.backend}`, "
             f"{args.runs} runs per tree, trees alternating; medians (min-max). Load average "
             f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after (one-minute averages: they count "
             "whatever ran in the minute before, this script's own runs included).", "",
             "| tree | to first output, s | to exit, s | CPU time, s |", "|---|---:|---:|---:|"]

    def spread(values):
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    for tree in trees:
        first, total, cpu = zip(*runs[tree])
        lines.append(f"| `{tree}` | {spread(first)} | {spread(total)} | {spread(cpu)} |")
    if args.phases:
        flags = ("transformers imported", "torch imported")
        names = [name for name in phases[trees[0]][0] if name not in flags]
        lines += ["", "In-process phases, medians in seconds (a separate `python -c` run per sample):", "",
                  "| tree | " + " | ".join(names) + " | " + " | ".join(flags) + " |",
                  "|---|" + "---:|" * (len(names) + len(flags))]
        for tree in trees:
            cells = [f"{statistics.median(sample[name] for sample in phases[tree]):.2f}" for name in names]
            cells += ["yes" if any(sample.get(flag) for sample in phases[tree]) else "no" for flag in flags]
            lines.append(f"| `{tree}` | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    publish(text, args.write)


if __name__ == "__main__":
    main()
