"""The int8 backend and what fast=True chooses: speed against each model's own pipeline, accuracy on labels.

    ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python benchmarks/int8_backend.py \
        --write benchmarks/results/int8-backend-vnni.md
    python benchmarks/int8_backend.py --write benchmarks/results/int8-backend-amx.md

``ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI`` caps oneDNN (torch's and OpenVINO's) at AVX-512 with VNNI: no AMX and
no native bfloat16, the CPU most users have. The sample is labelled: the sentences of the default's recipe's
data (training/claim-types-mpnet-lora.toml, read from ../shared at run time) in articles the model never saw,
neither in training nor in its dev split (its manifest lists them; the recipe's test split rebuilt today may
hold articles it trained on, since a corrected label can move an article between splits). Each job runs in a
fresh process (peak RSS is its own), through the user's path: ``classify(list, split_sentences=False)`` (tokenising and
batching included) and ``stanceclf score`` on a folder of short news files.
Per model: transformers' pipeline on the model's `stanceclf export`, fp32, ``fast="int8"`` and ``fast=True``;
macro F1 against the gold labels, label decisions changed from fp32, sentences/s and peak RSS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from inference import REPO, SHARED, run_child  # benchmarks/inference.py, beside this script
from report import publish

from stanceclf.cache import cache_dir
from stanceclf.infer.backends import CACHE_FILE
from stanceclf.machine import cpu_name, described_flags

RECIPE = REPO / "training" / "claim-types-mpnet-lora.toml"
MODELS = {"default": REPO / "models" / "claim-types", "student": REPO / "models" / "claim-types-student"}


def labelled_sample(model_dir: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """The sentences of the recipe's data in articles the model never saw (in neither its training nor its
    dev split, as its manifest records them): sentences, gold labels (n x L) and the label names."""
    from datasets import concatenate_datasets

    from stanceclf.data.schema import load_schema
    from stanceclf.train.evaluation import rows_never_seen
    from stanceclf.train.phases import prepare_dataset
    from stanceclf.train.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    schema = load_schema(recipe.schema_path)
    dataset, _, _ = prepare_dataset(recipe, schema)
    unseen = rows_never_seen(model_dir, concatenate_datasets([dataset[split] for split in dataset]))
    return list(unseen["text"]), np.array(unseen["labels"], dtype=int), schema.label_names


def decisions_of(scores: list[list[float]], model_dir: Path) -> np.ndarray:
    from stanceclf.model.manifest import ModelManifest

    manifest = ModelManifest.read(model_dir)
    return np.array(scores) >= np.array([manifest.thresholds[label] for label in manifest.labels])


def macro_f1(gold: np.ndarray, decided: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, decided.astype(int), average="macro", zero_division=0))


def score_folder(model_dir: Path, folder: Path, backend: str, out: Path) -> dict:
    """`stanceclf score FOLDER` as a new user runs it, timed with /usr/bin/time (peak RSS)."""
    command = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "stanceclf", "score", str(folder),
               "--out", str(out), "--model", str(model_dir), "--no-progress", "--overwrite", "--backend", backend]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    rss_kb, elapsed = result.stderr.strip().splitlines()[-1].split()
    rows = sum(1 for _ in open(out, encoding="utf-8"))
    return {"sentences": rows, "seconds": float(elapsed), "peak_rss_mb": int(rss_kb) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default,student")
    parser.add_argument("--limit", type=int, help="only this many labelled sentences (a dry run)")
    parser.add_argument("--articles", type=int, default=30, help="short news files in the new user's folder")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stanceclf-int8-"))
    folder = work / "news"
    folder.mkdir()
    for path in sorted((SHARED / "ptc" / "dev").glob("*.txt"))[: args.articles]:
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    lines = ["# The int8 backend and `fast=True`", "",
             "Command: `" + (f"ONEDNN_MAX_CPU_ISA={isa} " if isa else "") + "python benchmarks/int8_backend.py "
             + shlex.join(sys.argv[1:]) + "`", "",
             f"Date {datetime.date.today()}; {cpu_name()}, {os.cpu_count()} cores; CPU flags: {described_flags()}; "
             + (f"oneDNN capped at `{isa}` (torch's and OpenVINO's kernels: no AMX, no native bfloat16). "
                if isa else "no ISA cap. ")
             + f"Python {platform.python_version()}, torch {__import__('torch').__version__}, "
             f"OpenVINO {__import__('openvino').__version__}, NNCF {__import__('nncf').__version__}. "
             "Each job in a fresh process, one run each (this machine varies by up to 40% run to run).", ""]
    for name in args.models.split(","):
        model_dir = MODELS[name]
        texts, gold, labels = labelled_sample(model_dir)
        texts, gold = texts[: args.limit], gold[: args.limit]
        n = len(texts)
        sentences_file = work / f"{name}-sentences.json"
        sentences_file.write_text(json.dumps(texts))
        pipe = run_child("pipeline", str(model_dir), str(sentences_file))
        runs = {"fp32": run_child("classify", str(model_dir), str(sentences_file), fast=False),
                "int8": run_child("classify", str(model_dir), str(sentences_file), fast="int8")}
        # The first fast load must measure, not read what an earlier run chose: forget this machine's
        # measured choices (the next fast load of any model measures again).
        (cache_dir() / CACHE_FILE).unlink(missing_ok=True)
        # The first fast load measures every candidate in this process (its peak RSS shows that once); the
        # second reads the cached choice, as every later run does.
        runs["fast=True, first load"] = run_child("classify", str(model_dir), str(sentences_file), fast=True)
        runs["fast=True"] = run_child("classify", str(model_dir), str(sentences_file), fast=True)
        from stanceclf import load

        chosen = load(model_dir, fast=True).backend
        reference = decisions_of(runs["fp32"]["scores"], model_dir)
        base = n / pipe["seconds"]
        lines += [f"## `{name}` ({model_dir.relative_to(REPO)})", "",
                  f"Labelled sample: {n} sentences of `training/claim-types-mpnet-lora.toml`'s data in articles this "
                  f"model never saw, in training or in its dev split (gold labels; {', '.join(labels)}).", "",
                  "| path | sentences/s | vs its pipeline | peak RSS MB | macro F1 | decisions changed from fp32 |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| `pipeline('text-classification', top_k=None)` | {base:.1f} | 1.00x | {pipe['peak_rss_mb']:.0f} | | |"]
        for label, run in runs.items():
            decided = decisions_of(run["scores"], model_dir)
            changed = int((decided != reference).sum())
            shown = f"`classify`, {label}" + (f" (chose `{chosen}`)" if label.startswith("fast=True") else "")
            lines.append(f"| {shown} | {n / run['seconds']:.1f} | {n / run['seconds'] / base:.2f}x | "
                         f"{run['peak_rss_mb']:.0f} | {macro_f1(gold, decided):.4f} | "
                         f"{changed} of {decided.size} ({changed / decided.size:.2%}) |")
        plain = score_folder(model_dir, folder, "torch", work / f"{name}-fp32.jsonl")
        fast = score_folder(model_dir, folder, "auto", work / f"{name}-fast.jsonl")
        lines += ["", f"A new user's case: `stanceclf score` on a folder of {args.articles} short news files "
                  f"(PTC dev articles, {plain['sentences']} sentences; process start, splitting and writing included):", "",
                  "| flags | seconds | sentences/s | peak RSS MB |", "|---|---:|---:|---:|"]
        for label, row in (("`--backend torch` (no flag)", plain), (f"`--fast` (chose `{chosen}`)", fast)):
            lines.append(f"| {label} | {row['seconds']:.1f} | {row['sentences'] / row['seconds']:.1f} | "
                         f"{row['peak_rss_mb']:.0f} |")
        lines.append("")
    publish("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
