"""Throughput of each backend on a model, on the first N sentences of benchmarks/inference.py's corpus:
a short check for large models (MPNet), where the full inference benchmark would take an hour.

    python benchmarks/mpnet_backends.py runs/claim-types-teacher-model --sentences 500

Each backend runs in a fresh process (benchmarks/inference.py's run_child); the largest score change is
measured against the torch (fp32) scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inference as bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--sentences", type=int, default=500)
    args = parser.parse_args()
    sentences = bench.corpus_sentences()[: args.sentences]
    path = Path(tempfile.mkdtemp(prefix="stanceclf-bench-")) / "sentences.json"
    path.write_text(json.dumps(sentences))
    reference = bench.run_child("classify", args.model, str(path))
    scores = np.array(reference.pop("scores"))
    print(f"torch: {len(sentences) / reference['seconds']:.1f} sentences/s, peak RSS {reference['peak_rss_mb']:.0f} MB")
    for backend in ("bf16", "onnx"):
        result = bench.run_child("classify", args.model, str(path), fast=backend)
        gap = np.abs(np.array(result.pop("scores")) - scores).max()
        print(f"{backend}: {len(sentences) / result['seconds']:.1f} sentences/s, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB, largest score change {gap:.4f}")


if __name__ == "__main__":
    main()
