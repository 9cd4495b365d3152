"""Training steps per second of a recipe with random batches and with length-grouped batches.

    python benchmarks/training_speed.py training/claim-types.toml --steps 80 \
        --write benchmarks/results/training-speed.md

Runs ``stanceclf train RECIPE`` for ``--steps`` optimiser steps twice, once with
``training.group_by_length=false`` and once with ``true`` (same seed, same data), each in a fresh run
folder under ``--work``, and reads the Trainer's own timing from the saved model's manifest. Only the
training steps are timed: the dev evaluation that ends each run is timed apart (``fit_seconds`` and
``dev_evaluation_seconds`` of the saved manifest), and loading the base model and building the dataset
are left out. Each batch's padding is counted from the recipe's tokenizer and an order drawn by the same
samplers with the recipe's seed (not the very order the Trainer drew), over the labelled training
sentences only, so the table shows why the speed changes. Run it on a quiet machine: anything else on
the cores changes the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import publish  # noqa: E402


def timed_run(recipe: Path, work: Path, grouped: bool, steps: int, overrides: list[str]) -> dict:
    run_dir, output_dir = work / f"run-grouped-{grouped}", work / f"model-grouped-{grouped}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(output_dir, ignore_errors=True)
    relative = lambda path: os.path.relpath(path.resolve(), recipe.resolve().parent)  # noqa: E731
    argv = ["train", str(recipe), "--no-resume", "--set", f"training.group_by_length={str(grouped).lower()}",
            "--set", f"training.max_steps={steps}", "--set", f"training.eval_every={steps}",
            "--set", f"run_dir={relative(run_dir)}", "--set", f"output_dir={relative(output_dir)}",
            *[part for override in overrides for part in ("--set", override)]]
    print("$ stanceclf " + shlex.join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "stanceclf.cli", *argv], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    training = json.loads((output_dir / "stanceclf.json").read_text(encoding="utf-8"))["training"]
    if training["steps"] != steps:
        raise SystemExit(f"{output_dir}: trained {training['steps']} steps, not {steps}")
    # fit_seconds spans the whole loop, the dev evaluation at the last step included.
    seconds = training["fit_seconds"] - training["dev_evaluation_seconds"]
    return {"grouped": grouped, "seconds": seconds, "steps_per_second": steps / seconds,
            "eval_seconds": training["dev_evaluation_seconds"]}


def padding_share(recipe_path: Path, overrides: list[str], steps: int) -> dict[bool, float]:
    """Padding tokens / all tokens in the first ``steps`` training batches of each sampler."""
    import numpy as np
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from stanceclf.data.schema import load_schema
    from stanceclf.train.recipe import load_recipe
    from stanceclf.train.phases import load_base_tokenizer, prepare_dataset

    recipe = load_recipe(recipe_path, overrides)
    dataset, _, _ = prepare_dataset(recipe, load_schema(recipe.schema_path))
    tokenizer = load_base_tokenizer(recipe.base_model)
    lengths = np.array([len(ids) for ids in tokenizer(list(dataset["train"]["text"]), truncation=True,
                                                      max_length=recipe.training.max_length)["input_ids"]])
    # The sampler groups by the accumulated batch, as the Trainer's does; padding happens per device batch.
    batch = recipe.training.batch_size
    group = batch * recipe.training.gradient_accumulation_steps
    shares = {}
    for grouped in (False, True):
        generator = torch.Generator().manual_seed(recipe.seed)
        order = (list(LengthGroupedSampler(group, lengths=lengths.tolist(), generator=generator)) if grouped
                 else torch.randperm(len(lengths), generator=generator).tolist())
        real = padded = 0
        for start in range(0, min(len(order), steps * group), batch):
            chunk = lengths[order[start:start + batch]]
            real, padded = real + int(chunk.sum()), padded + int(chunk.max()) * len(chunk)
        shares[grouped] = 1 - real / padded
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--work", type=Path, default=Path("runs/training-speed"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a recipe override for both runs")
    parser.add_argument("--note", action="append", default=[], help="a paragraph below the table (repeatable)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    shares = padding_share(args.recipe, args.overrides, args.steps)
    rows = [timed_run(args.recipe, args.work, grouped, args.steps, args.overrides) for grouped in (False, True)]
    command = "python benchmarks/training_speed.py " + shlex.join(
        [str(args.recipe), "--steps", str(args.steps), *[part for o in args.overrides for part in ("--set", o)]])
    lines = [f"# Training speed of `{args.recipe}`: random against length-grouped batches", "",
             f"Command: `{command}`", f"Date {datetime.date.today()}, {platform.machine()} with {os.cpu_count()} "
             f"cores, Python {platform.python_version()}. {args.steps} optimiser steps each, same seed and data.", "",
             "| batches | padding share of the tokens | training steps/s | seconds for the steps | speed-up |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {'length-grouped' if row['grouped'] else 'random'} | {shares[row['grouped']]:.0%} | "
                     f"{row['steps_per_second']:.2f} | {row['seconds']:.0f} | "
                     f"{row['steps_per_second'] / rows[0]['steps_per_second']:.2f}x |")
    lines += [line for note in args.note for line in ("", note)]
    publish("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
