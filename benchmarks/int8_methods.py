"""Which int8 method keeps a model's label decisions: static activation ranges against run-time (dynamic) ones.

    ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python benchmarks/int8_methods.py --model models/claim-types \
        --threads 2 --write benchmarks/results/int8-methods-vnni.md

On labelled sentences of articles the model never saw, in training or in its dev split (its manifest lists
them): those of the default recipe's data, and those of batches 4 and 5, labelled after the shipped models
were trained. Each method's label decisions are compared with torch fp32's, and timed through
``predict_proba`` (tokenising and batching included):

- ``openvino fp32``: the converted graph, unquantised (the reference for speed);
- ``static``: NNCF's accuracy-controlled static int8, as the library builds it first (calibrated on the
  seed sentences);
- ``dynamic G``: int8 weights (``nncf.compress_weights``) with activations quantised per group of G at
  run time by OpenVINO (the library's fallback uses G = ``DYNAMIC_GROUP_SIZE``).

Graphs are built in this process (not cached). Run it on a quiet machine for the speeds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from report import publish

from stanceclf.machine import cpu_name, described_flags

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "training" / "claim-types-mpnet-lora.toml"
LATER_BATCHES = ["../labels/claim-types/batch4.jsonl", "../labels/claim-types/batch5.jsonl"]


def samples(model_dir: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{name: (sentences, gold labels)}``: the sentences of articles the model never saw, in the default
    recipe's data and in batches 4 and 5."""
    from datasets import concatenate_datasets

    from stanceclf.data.schema import load_schema
    from stanceclf.train.evaluation import rows_never_seen
    from stanceclf.train.phases import prepare_dataset
    from stanceclf.train.recipe import load_recipe

    result = {}
    for name, overrides in (("recipe's data", []), ("batches 4 and 5", [f"data.inputs={json.dumps(LATER_BATCHES)}"])):
        recipe = load_recipe(RECIPE, overrides)
        dataset, _, _ = prepare_dataset(recipe, load_schema(recipe.schema_path))
        unseen = rows_never_seen(model_dir, concatenate_datasets([dataset[split] for split in dataset]))
        result[name] = (list(unseen["text"]), np.array(unseen["labels"], dtype=int))
    return result


def graphs(model, work: Path, groups: list[int], threads: int) -> dict[str, object]:
    """Each method's encoder for ``model``."""
    import nncf
    import openvino as ov

    from stanceclf.infer import int8

    units = int8.calibration_units(model)
    encoders = {}
    with int8._quiet_nncf():
        plain = int8._openvino_graph(model)
        ov.save_model(plain, str(work / "fp32.xml"), compress_to_fp16=False)
        static_dir = work / "static"
        static_dir.mkdir()
        # The static graph kept whatever it changes (it would be replaced beyond half the gate), to measure it.
        int8.quantize_into(model, units, static_dir, threads, static_bound=1.0)
        ov.save_model(nncf.compress_weights(int8._openvino_graph(model), mode=nncf.CompressWeightsMode.INT8_ASYM),
                      str(work / "weights.xml"), compress_to_fp16=False)
    encoders["openvino fp32"] = int8.Int8Encoder(work / "fp32.xml", threads=threads)
    encoders["static"] = int8.Int8Encoder(static_dir / int8.GRAPH_NAME, threads=threads)
    for group in groups:
        report = int8.QuantizationReport(0, 0, 0, 0.0, 0.0, "", "", method="dynamic", group_size=group)
        encoders[f"dynamic {group}"] = int8.Int8Encoder(work / "weights.xml", threads=threads, report=report)
    return encoders


def main() -> None:
    import tempfile

    import torch
    from sklearn.metrics import f1_score

    from stanceclf.infer.model import StanceModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "claim-types")
    parser.add_argument("--groups", default="32,128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = StanceModel.from_pretrained(args.model)
    data = samples(args.model)
    thresholds = model.threshold_vector
    rows = []
    with tempfile.TemporaryDirectory(prefix="stanceclf-int8-methods-") as work:
        encoders = {"torch fp32": None, **graphs(model, Path(work), [int(g) for g in args.groups.split(",")],
                                                  args.threads)}
        reference = {}
        for method, encoder in encoders.items():
            runner = model if encoder is None else model.on_encoder(encoder, "int8")
            row = {"method": method}
            for name, (texts, gold) in data.items():
                started = time.perf_counter()
                decided = runner.predict_proba(texts) >= thresholds
                seconds = time.perf_counter() - started
                reference.setdefault(name, decided)
                changed = decided != reference[name]
                row[name] = {"changed": int(changed.sum()), "decisions": int(changed.size),
                             "macro_f1": float(f1_score(gold, decided.astype(int), average="macro", zero_division=0)),
                             "per_s": len(texts) / seconds}
            if method == "static":
                row["calibration"] = json.loads((Path(work) / "static" / "quantization.json").read_text())
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    names = list(data)
    lines = ["# int8 methods against fp32: label decisions and speed", "",
             f"Command: `{shlex.join(['python', 'benchmarks/int8_methods.py', *sys.argv[1:]])}`"
             + (f" with `ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}`" if "ONEDNN_MAX_CPU_ISA" in os.environ
                else ""), "",
             f"Date {datetime.date.today()}; {cpu_name()}, {os.cpu_count()} cores; CPU flags: {described_flags()}; "
             f"{args.threads} thread(s); model `{args.model.name}`; samples: "
             + ", ".join(f"{name} ({len(data[name][0])} sentences)" for name in names) + ".", "",
             "| method | " + " | ".join(f"{n}: decisions changed | {n}: macro F1 | {n}: sentences/s" for n in names)
             + " |", "|---|" + "---:|---:|---:|" * len(names)]
    for row in rows:
        lines.append(f"| {row['method']} | " + " | ".join(
            f"{row[n]['changed']} of {row[n]['decisions']} ({row[n]['changed'] / row[n]['decisions']:.2%}) | "
            f"{row[n]['macro_f1']:.4f} | {row[n]['per_s']:.1f}" for n in names) + " |")
    publish("\n".join(lines) + "\n", args.write)


if __name__ == "__main__":
    main()
