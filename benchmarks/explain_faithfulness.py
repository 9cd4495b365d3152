"""How faithful are the explanations of stanceclf.explain, per label: deletion curves, their area, and cost.

    stanceclf build-dataset --recipe training/claim-types-student.toml --out /tmp/ds
    python benchmarks/explain_faithfulness.py /tmp/ds/test.jsonl --model claim-types-student --per-label 60 \
        [--threads 2] [--write benchmarks/results/explain-faithfulness.md]

For each label, the test sentences the model flags with it (at most ``--per-label`` of them, a seeded random
choice) are explained by each method (occlusion, integrated gradients) and given a random order of their words.
Deleting the first k words of each order (k = 1..``--max-k``, through ``stanceclf.infer.explain.without_words``,
the deletion occlusion itself uses) gives a deletion curve of the label's calibrated score; the area over it
(AOPC: the mean over k of the score's drop) is larger for the more faithful method. Random deletion is the
mean of ``--random-orders`` orders per sentence. Intervals: 95% bootstrap over sentences, of each method's AOPC
and of its paired difference with random deletion. Cost: seconds per explained (sentence, label), one sentence
at a time, on ``--threads`` torch threads.

Only numbers are written: no sentence of the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from report import publish  # benchmarks/report.py, beside this script

from stanceclf.machine import cpu_name, described_flags

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ("occlusion", "integrated_gradients")
BOOTSTRAP_SAMPLES = 2000


def aopc(start: float, curve: np.ndarray) -> float:
    """The area over a deletion curve: the mean drop of the score over k = 1..K."""
    return float(np.mean(start - curve))


def bootstrap(values: np.ndarray, rng, samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """The 95% percentile interval of the mean of ``values``, resampled."""
    if len(values) == 0:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def deletion_texts(text: str, order: np.ndarray, max_k: int) -> list[str]:
    from stanceclf.infer.explain import without_words, word_spans

    spans = word_spans(text)
    return [without_words(text, spans, order[: min(k, len(spans))]) for k in range(1, max_k + 1)]


def explain_one(model, text: str, label: str, method: str, steps: int):
    from stanceclf.infer.explain import explain
    from stanceclf.infer.results import Prediction

    prediction = Prediction(text, 0, len(text), [label], {})
    return explain(prediction, label=label, model=model, method=method, steps=steps).explanations[label]


def measure(model, sentences: list[dict], labels: list[str], args) -> dict:
    """Per label: AOPC per sentence for each method and random deletion, curves, costs, completeness."""
    rng = np.random.default_rng(args.seed)
    from stanceclf.model.decision import decide

    probs = model.predict_proba([s["text"] for s in sentences])
    flagged = decide(probs, model.threshold_vector)
    results = {}
    for j, label in enumerate(labels):
        chosen = np.flatnonzero(flagged[:, j])
        if len(chosen) > args.per_label:
            chosen = np.sort(rng.choice(chosen, args.per_label, replace=False))
        gold = int(sum(sentences[i]["labels"][j] for i in chosen))
        weights = {method: [] for method in METHODS}
        seconds = {method: 0.0 for method in METHODS}
        gaps = []
        for i in chosen:
            text = sentences[i]["text"]
            for method in METHODS:
                started = time.perf_counter()
                explanation = explain_one(model, text, label, method, args.steps)
                seconds[method] += time.perf_counter() - started
                weights[method].append(np.array([w.weight for w in explanation.words]))
            gaps.append(abs(weights["integrated_gradients"][-1].sum() - (probs[i, j] - baseline_score(model, text, j))))
        # Every deletion of every order, scored in one batched pass.
        texts, slots = [], []
        for position, i in enumerate(chosen):
            text = sentences[i]["text"]
            # Highest weight first (ties: the earlier word), and random orders.
            orders = {method: [np.argsort(-weights[method][position], kind="stable")] for method in METHODS}
            orders["random"] = [rng.permutation(len(weights[METHODS[0]][position]))
                                for _ in range(args.random_orders)]
            for name, order_list in orders.items():
                for order in order_list:
                    slots.append((position, name, len(texts)))
                    texts.extend(deletion_texts(text, order, args.max_k))
        scores = model.predict_proba(texts)[:, j].astype(np.float64)
        curves = {name: np.zeros((len(chosen), args.max_k)) for name in (*METHODS, "random")}
        counts = {name: np.zeros(len(chosen)) for name in curves}
        for position, name, start in slots:
            curves[name][position] += scores[start: start + args.max_k]
            counts[name][position] += 1
        start_scores = probs[chosen, j].astype(np.float64)
        for name in curves:
            curves[name] /= counts[name][:, None]
        per_sentence = {name: start_scores - curves[name].mean(axis=1) for name in curves}
        results[label] = {"n": len(chosen), "gold": gold, "aopc": per_sentence,
                          "curve": {name: (start_scores[:, None] - curves[name]).mean(axis=0) for name in curves},
                          "seconds": {m: seconds[m] / max(len(chosen), 1) for m in METHODS},
                          "words": float(np.mean([len(w) for w in weights[METHODS[0]]])) if len(chosen) else 0.0,
                          "completeness_gap": float(np.mean(gaps)) if gaps else float("nan")}
    return results


def baseline_score(model, text: str, j: int) -> float:
    """The label's score with every word piece replaced by padding: integrated gradients' baseline."""
    import torch

    from stanceclf.infer.explain import padding_baseline

    ids, baseline, _ = padding_baseline(model, text)
    with torch.no_grad():
        logits = model.model(input_ids=torch.tensor([baseline]),
                             attention_mask=torch.ones((1, len(ids)), dtype=torch.long)).logits
    return float(torch.sigmoid(logits[0, j] / float(model.temperature_vector[j])))


def render(results: dict, args, model_name: str, seconds: float) -> str:
    rng = np.random.default_rng(args.seed + 1)
    lines = [f"# Explanation faithfulness: {model_name}", "",
             f"Command: `{' '.join(shlex.quote(a) for a in sys.argv)}`", "",
             f"CPU: {cpu_name()}; {described_flags()}; {args.threads} torch threads; {platform.python_version()}; "
             f"{time.strftime('%Y-%m-%d')}; {seconds / 60:.1f} min in all.", "",
             f"Deletion of the first k words of each order, k = 1..{args.max_k}; AOPC = mean drop of the label's "
             f"calibrated score over those k (higher: the order found the words the score rests on). Random: the mean "
             f"of {args.random_orders} random orders per sentence. [95% bootstrap interval over sentences]. Cost: "
             "seconds per explained (sentence, label), one sentence at a time.", "",
             "| label | sentences (gold +) | words | occlusion AOPC | integrated gradients AOPC | random AOPC | "
             "occlusion − random | IG − random | occlusion s | IG s | IG completeness gap |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        cells = [label, f"{r['n']} ({r['gold']})", f"{r['words']:.1f}"]
        for name in (*METHODS, "random"):
            low, high = bootstrap(r["aopc"][name], rng)
            cells.append(f"{r['aopc'][name].mean():.3f} [{low:.3f}, {high:.3f}]")
        for method in METHODS:
            difference = r["aopc"][method] - r["aopc"]["random"]
            low, high = bootstrap(difference, rng)
            cells.append(f"{difference.mean():+.3f} [{low:+.3f}, {high:+.3f}]")
        cells += [f"{r['seconds']['occlusion']:.3f}", f"{r['seconds']['integrated_gradients']:.3f}",
                  f"{r['completeness_gap']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean drop of the score after deleting k words (the deletion curves):", "",
              "| label | order | " + " | ".join(f"k={k}" for k in range(1, args.max_k + 1)) + " |",
              "|---|---|" + "---|" * args.max_k]
    for label, r in results.items():
        for name in (*METHODS, "random"):
            lines.append(f"| {label} | {name} | " + " | ".join(f"{v:.3f}" for v in r["curve"][name]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentences", type=Path, help="test.jsonl of 'stanceclf build-dataset'")
    parser.add_argument("--model", default="claim-types-student")
    parser.add_argument("--per-label", type=int, default=60, help="flagged sentences explained per label")
    parser.add_argument("--max-k", type=int, default=10)
    parser.add_argument("--random-orders", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="integrated gradients' points (default: the library's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true", help="add to --write instead of replacing it")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()

    import torch

    from stanceclf.infer.explain import DEFAULT_STEPS
    from stanceclf.infer.predict import load

    torch.set_num_threads(args.threads)
    args.steps = args.steps or DEFAULT_STEPS
    model = load(args.model)
    sentences = [json.loads(line) for line in args.sentences.read_text(encoding="utf-8").splitlines()]
    started = time.perf_counter()
    results = measure(model, sentences, model.labels, args)
    text = render(results, args, args.model, time.perf_counter() - started)
    if args.append and args.write and args.write.exists():
        text = args.write.read_text(encoding="utf-8") + "\n" + text
    publish(text, args.write)


if __name__ == "__main__":
    main()
