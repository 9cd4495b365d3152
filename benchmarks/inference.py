"""Inference throughput and memory: stanceclf against transformers' pipeline, and scaling.

    python benchmarks/inference.py --model models/claim-types --write benchmarks/results/inference.md

Each measurement runs in its own fresh process, so that peak RSS is that job's alone.
Sentences: every sentence of the 200 SemEval articles plus the PTC dev articles in
../shared (news and opinion; read at run time, never copied), at least 5,000.
Measured (one run each, same machine, same sentences):
  1. transformers.pipeline("text-classification", model=DIR, top_k=None), default settings
  2. stanceclf classify(list, split_sentences=False), fp32
  3. the same with each fast path: load(fast="bf16") (bfloat16 matrix products) and
     load(fast="onnx") (ONNX Runtime, fused attention); the largest score difference from
     fp32 and the number of label decisions that change
  4. stanceclf score on the articles as documents (splitting included), fp32 and --fast
  5. scaling: stanceclf score on 10k and 100k sentences (the corpus repeated), time and peak RSS
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import publish  # benchmarks/report.py, beside this script

from stanceclf.machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpus"


def corpus_documents(limit: int | None = None) -> list[tuple[str, str]]:
    docs = []
    for path in sorted((SHARED / "semeval2025-en").glob("*.txt")) + sorted((SHARED / "ptc" / "dev").glob("*.txt")):
        docs.append((path.stem, path.read_text(encoding="utf-8")))
    return docs[:limit]


def corpus_sentences(minimum: int = 5000) -> list[str]:
    from stanceclf.data.sentences import SentenceSplitter

    splitter = SentenceSplitter()
    sentences = [s.text for _, text in corpus_documents() for s in splitter.split(text)]
    if len(sentences) < minimum:
        raise SystemExit(f"only {len(sentences)} sentences found under {SHARED}")
    return sentences


# ---- the measured jobs: each runs in a child process ------------------------------------------------
def job_pipeline(model_dir: str, sentences: list[str]) -> dict:
    from transformers import pipeline

    from stanceclf.model.directory import export_model_directory
    from stanceclf.model.manifest import ModelManifest

    if ModelManifest.read(Path(model_dir)).stored_weights is not None:
        # An adapter directory: pipeline runs the same model merged, as `stanceclf export` writes it
        # (into a folder removed when this job's process ends: a merged MPNet is 438 MB).
        exported = tempfile.TemporaryDirectory(prefix="stanceclf-bench-plain-")
        atexit.register(exported.cleanup)
        model_dir = str(export_model_directory(model_dir, Path(exported.name) / "plain"))
    classifier = pipeline("text-classification", model=model_dir, top_k=None)
    classifier(sentences[:8])  # warm-up, as for every job
    start = time.perf_counter()
    classifier(sentences)
    return {"seconds": time.perf_counter() - start}


def job_classify(model_dir: str, sentences: list[str], fast: bool | str) -> dict:
    from stanceclf import load

    model = load(model_dir, fast=fast)
    model.classify(sentences[:8], split_sentences=False)
    model.stats = type(model.stats)()
    start = time.perf_counter()
    predictions = model.classify(sentences, split_sentences=False)
    seconds = time.perf_counter() - start
    scores = [[p[0].scores[label] for label in model.labels] for p in predictions]
    return {"seconds": seconds, "tokens": model.stats.tokens, "padded_tokens": model.stats.padded_tokens,
            "scores": scores}


def run_child(kind: str, model_dir: str, sentences_file: str, fast: bool | str = False) -> dict:
    code = (
        # the benchmarks folder too: this module imports report.py, its neighbour
        "import json,resource,sys,importlib.util as u;sys.path[:0]=[%r,%r];"
        "spec=u.spec_from_file_location('bench_inference',%r);m=u.module_from_spec(spec);spec.loader.exec_module(m);"
        "job_pipeline,job_classify=m.job_pipeline,m.job_classify;"
        "s=json.load(open(%r));"
        "r=%s;"
        "r['peak_rss_mb']=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024;print(json.dumps(r))"
    ) % (str(REPO), str(Path(__file__).resolve().parent), str(Path(__file__).resolve()), sentences_file,
         f"job_pipeline({model_dir!r}, s)" if kind == "pipeline" else f"job_classify({model_dir!r}, s, {fast!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise SystemExit(f"the {kind} job failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_score(model_dir: str, docs: list[tuple[str, str]], repeat_to: int | None, workdir: Path,
              backend: str) -> dict:
    """stanceclf score as a user runs it, with /usr/bin/time for the peak RSS."""
    from stanceclf.data.sentences import SentenceSplitter

    splitter = SentenceSplitter()
    counts = {doc_id: len(splitter.split(text)) for doc_id, text in docs}
    source = workdir / f"corpus-{repeat_to}.jsonl"
    total = 0
    with open(source, "w", encoding="utf-8") as handle:
        copy = 0
        while True:
            for doc_id, text in docs:
                handle.write(json.dumps({"id": f"{copy}-{doc_id}", "text": text}) + "\n")
                total += counts[doc_id]
                if repeat_to and total >= repeat_to:
                    break
            copy += 1
            if not repeat_to or total >= repeat_to:
                break
    out = workdir / f"scores-{repeat_to}.jsonl"
    command = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "stanceclf.cli", "score", str(source),
               "--out", str(out), "--model", model_dir, "--no-progress", "--overwrite", "--backend", backend]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    rss_kb, elapsed = result.stderr.strip().splitlines()[-1].split()
    rows = sum(1 for _ in open(out, encoding="utf-8"))
    return {"sentences": rows, "seconds": float(elapsed), "peak_rss_mb": int(rss_kb) / 1024}


def matmul_peak_gflops(seconds: float = 3.0, dtype: str = "float32") -> float:
    import torch

    a, b = (torch.randn(1024, 1024).to(getattr(torch, dtype)) for _ in range(2))
    for _ in range(3):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 1024 ** 3 * n / (time.perf_counter() - start) / 1e9


def model_flops(model_dir: str, padded_tokens: int, sequences: int) -> float:
    """Forward FLOPs: 2 x non-embedding parameters per token, plus attention scores and mixing."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_token_linear = layers * (4 * h * h + 2 * h * inter)
    mean_len = padded_tokens / max(sequences, 1)
    attention = layers * 2 * 2 * mean_len * h  # QK^T and AV per token
    return 2 * per_token_linear * padded_tokens + attention * padded_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "claim-types"))
    parser.add_argument("--scaling", default="10000,100000", help="corpus sizes in sentences for stanceclf score")
    parser.add_argument("--scaling-backend", default="auto", help="backend of the scaling runs (torch, bf16, onnx, auto)")
    parser.add_argument("--limit", type=int, help="use only this many sentences (a quick dry run)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()

    sentences = corpus_sentences(minimum=args.limit or 5000)[: args.limit]
    workdir = Path(tempfile.mkdtemp(prefix="stanceclf-bench-"))
    sentences_file = workdir / "sentences.json"
    sentences_file.write_text(json.dumps(sentences))
    n = len(sentences)
    print(f"{n} sentences", file=sys.stderr)

    pipe = run_child("pipeline", args.model, str(sentences_file))
    fp32 = run_child("classify", args.model, str(sentences_file))
    fast = {backend: run_child("classify", args.model, str(sentences_file), fast=backend) for backend in ("bf16", "onnx")}
    import numpy as np

    from stanceclf.infer.backends import AUTO, resolve_backend
    from stanceclf.infer.predict import load
    from stanceclf.model.manifest import ModelManifest

    manifest = ModelManifest.read(Path(args.model))
    threshold_row = np.array([manifest.thresholds[label] for label in manifest.labels])
    reference = np.array(fp32.pop("scores"))
    gaps = {}
    for backend, result in fast.items():
        scores = np.array(result.pop("scores"))
        flips = int(((scores >= threshold_row) != (reference >= threshold_row)).sum())
        gaps[backend] = (float(np.abs(scores - reference).max()), flips)
    documents = corpus_documents(limit=3 if args.limit else None)
    score = run_score(args.model, documents, None, workdir, backend="torch")
    score_fast = run_score(args.model, documents, None, workdir, backend="auto")
    peak = matmul_peak_gflops()
    peak_bf16 = matmul_peak_gflops(dtype="bfloat16")
    flops = model_flops(args.model, fp32["padded_tokens"], n)
    achieved = flops / fp32["seconds"] / 1e9
    scaling = [run_score(args.model, documents, int(size), workdir, backend=args.scaling_backend)
               for size in args.scaling.split(",")]

    def rate(seconds, count=n):
        return count / seconds

    base = rate(pipe["seconds"])
    auto = load(args.model, fast=True).backend  # what the calibration chose on this machine
    scaling_backend = auto if resolve_backend(args.scaling_backend) == AUTO else args.scaling_backend
    described = {"bf16": "bfloat16 matrix products", "onnx": "ONNX Runtime, fused attention"}
    lines = ["# Inference throughput and memory", "",
             "Command: `python benchmarks/inference.py " + shlex.join(sys.argv[1:]) + "`",
             f"Date {datetime.date.today()}, {platform.machine()} ({cpu_name()}), "
             f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {__import__('torch').__version__}, "
             f"transformers {__import__('transformers').__version__}. "
             f"`fast=True` on this machine chose `{auto}` by measuring. "
             "One run each; this machine varies by up to 40% from run to run.",
             f"Input: {'the first ' if args.limit else ''}{n} sentences of the 200 SemEval-2025 articles and the "
             "57 PTC dev articles "
             f"(mean {fp32['tokens'] / n:.1f} tokens; padding overhead with length-sorted batches "
             f"{fp32['padded_tokens'] / fp32['tokens'] - 1:.1%}).", "",
             "| system | sentences/s | vs pipeline | peak RSS MB |", "|---|---:|---:|---:|",
             f"| `pipeline('text-classification', top_k=None)`, default settings | {base:.1f} | 1.0x | "
             f"{pipe['peak_rss_mb']:.0f} |",
             f"| `classify(list, split_sentences=False)` fp32 | {rate(fp32['seconds']):.1f} | "
             f"{rate(fp32['seconds']) / base:.1f}x | {fp32['peak_rss_mb']:.0f} |"]
    for backend, result in fast.items():
        lines.append(f"| `classify(...)` with `load(fast=\"{backend}\")` ({described[backend]}) | "
                     f"{rate(result['seconds']):.1f} | {rate(result['seconds']) / base:.1f}x | "
                     f"{result['peak_rss_mb']:.0f} |")
    for label, row in (("fp32", score), (f"`--fast` ({auto})", score_fast)):
        lines.append(f"| `stanceclf score` on {len(documents)} articles (splitting, I/O, process start included), "
                     f"{label} | "
                     f"{rate(row['seconds'], row['sentences']):.1f} | "
                     f"{rate(row['seconds'], row['sentences']) / base:.1f}x | {row['peak_rss_mb']:.0f} |")
    lines += ["",
              f"fp32 path: {flops / n / 1e9:.3f} GFLOP per sentence (padded), {achieved:.1f} GFLOP/s achieved "
              f"against a measured fp32 matmul peak of {peak:.1f} GFLOP/s (1024x1024 `torch.mm`): "
              f"{achieved / peak:.0%} of peak. The same product in bfloat16 runs at {peak_bf16:.1f} GFLOP/s, "
              "which is where the bf16 path's speed comes from.", "",
              f"Fast paths against fp32, over all {n} sentences x {len(threshold_row)} labels (the tests require "
              "every score within 0.02):", ""]
    for backend, (gap, flips) in gaps.items():
        lines.append(f"- `{backend}`: largest score difference {gap:.4f}; label decisions changed: {flips} "
                     f"of {n * len(threshold_row)}.")
    lines += ["", f"## Scaling of `stanceclf score` (backend {scaling_backend})", "",
              "| sentences | seconds | sentences/s | peak RSS MB |", "|---:|---:|---:|---:|"]
    for row in scaling:
        lines.append(f"| {row['sentences']:,} | {row['seconds']:.0f} | {rate(row['seconds'], row['sentences']):.1f} | "
                     f"{row['peak_rss_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    publish(text, args.write)


if __name__ == "__main__":
    main()
