"""Compare the sentence-splitter backends of :class:`stanceclf.data.sentences.SentenceSplitter`.

(a) PTC (``train`` + ``dev``, read at run time from ``../shared/corpus/ptc``; no text of it
    is printed or written). Each article is a title line followed by one sentence per line,
    which gives a ready reference. The body is everything after the first line (a few
    articles have a title spread over two lines; blank lines are skipped). Two settings:

    * ``as-is``: the body with its newlines. Our rule "a newline always ends a sentence"
      finds every reference boundary for free, so this measures only the damage a backend
      does *inside* lines (extra boundaries cost precision).
    * ``joined``: the non-blank body lines, stripped, joined with single spaces; the splitter
      must find every boundary itself. The reference boundaries are the line ends.

    A boundary is the end offset of a sentence (sentences are already stripped of
    surrounding whitespace); the end of the text is not a boundary. Precision, recall and F1
    are micro-averaged over all articles. Speed is the number of reference sentences
    divided by the splitting time, both wall-clock and CPU time of this process (CPU time is
    the steadier figure on a busy machine).

(b) The five seed articles in ``examples/seeds`` (no gold): sentence counts per backend, and
    for each other backend the first differences from syntok, each shown as the smallest
    stretch of text on which the two sentence lists disagree.

Usage (from the repository root)::

    python benchmarks/sentence_splitters.py              # print the Markdown report
    python benchmarks/sentence_splitters.py --write      # ... and write benchmarks/results/sentence_splitters.md

Re-writing keeps a ``## Decision`` section already present in the results file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stanceclf.data.sentences import SentenceSplitter  # noqa: E402

BACKENDS = ("syntok", "pysbd", "blingfire")
RESULTS = REPO / "benchmarks" / "results" / "sentence_splitters.md"
DEFAULT_PTC = REPO.parent / "shared" / "corpus" / "ptc"
SEEDS = REPO / "examples" / "seeds"
MAX_DIFFERENCES = 15
DECISION = "## Decision"


# --- PTC --------------------------------------------------------------------------------------------


def read_ptc(ptc_dir: Path) -> list[tuple[str, str]]:
    """(article path, exact text) of every dev and train article."""
    articles = []
    for split in ("dev", "train"):
        for path in sorted((ptc_dir / split).glob("article*.txt")):
            # Bytes decoded as they are: no newline translation, as the PTC reader does.
            articles.append((f"{split}/{path.name}", path.read_bytes().decode("utf-8")))
    return articles


def body_as_is(text: str) -> tuple[str, set[int]]:
    """The body (after the first line) with its newlines, and its reference boundaries."""
    body = text[text.index("\n") + 1:] if "\n" in text else ""
    ends, offset = [], 0
    for line in body.split("\n"):
        if line.strip():
            ends.append(offset + len(line.rstrip()))
        offset += len(line) + 1
    return body, set(ends[:-1])


def body_joined(text: str) -> tuple[str, set[int]]:
    """The non-blank body lines joined with single spaces, and the line ends as reference boundaries."""
    body = text[text.index("\n") + 1:] if "\n" in text else ""
    lines = [line.strip() for line in body.split("\n") if line.strip()]
    ends, offset = [], 0
    for line in lines:
        offset += len(line)
        ends.append(offset)
        offset += 1
    return " ".join(lines), set(ends[:-1])


def predicted_boundaries(splitter: SentenceSplitter, text: str) -> set[int]:
    ends = [s.end for s in splitter.split(text)]
    return set(ends[:-1])


def evaluate_ptc(articles: list[tuple[str, str]], make_body) -> dict[str, dict]:
    bodies = [make_body(text) for _, text in articles]
    n_sentences = sum(len(ref) + 1 for body, ref in bodies if body.strip())
    results = {}
    for backend in BACKENDS:
        splitter = SentenceSplitter(backend=backend)
        splitter.split("Warm up. The backend is imported here.")
        tp = n_pred = n_ref = 0
        wall = cpu = 0.0
        for body, ref in bodies:
            w0, c0 = time.perf_counter(), time.process_time()
            pred = predicted_boundaries(splitter, body)
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
            tp += len(pred & ref)
            n_pred += len(pred)
            n_ref += len(ref)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_ref if n_ref else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        results[backend] = {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "predicted": n_pred,
                            "reference": n_ref, "sentences": n_sentences, "wall_s": wall, "cpu_s": cpu,
                            "per_s_wall": n_sentences / wall, "per_s_cpu": n_sentences / cpu if cpu else float("inf")}
    return results


def ptc_table(results: dict[str, dict]) -> str:
    lines = ["| backend | precision | recall | F1 | boundaries predicted / reference / correct "
             "| sentences/s (wall) | sentences/s (CPU) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for backend, r in results.items():
        lines.append(f"| {backend} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} "
                     f"| {r['predicted']} / {r['reference']} / {r['tp']} "
                     f"| {r['per_s_wall']:,.0f} | {r['per_s_cpu']:,.0f} |")
    return "\n".join(lines)


# --- seeds ------------------------------------------------------------------------------------------


def differences(text: str, base, other) -> list[tuple[list, list]]:
    """Minimal stretches where two sentence lists disagree: (base sentences, other sentences)."""
    base_same = {(s.start, s.end) for s in base}
    other_same = {(s.start, s.end) for s in other}
    base = [s for s in base if (s.start, s.end) not in other_same]
    other = [s for s in other if (s.start, s.end) not in base_same]
    groups, i, j = [], 0, 0
    while i < len(base) or j < len(other):
        a, b = [], []
        if i < len(base) and (j >= len(other) or base[i].start <= other[j].start):
            a.append(base[i])
            i += 1
        else:
            b.append(other[j])
            j += 1
        # Grow the group until both sides cover the same stretch (or no more overlapping sentence remains).
        while True:
            end = max(s.end for s in a + b)
            if i < len(base) and base[i].start < end:
                a.append(base[i])
                i += 1
            elif j < len(other) and other[j].start < end:
                b.append(other[j])
                j += 1
            else:
                break
        groups.append((a, b))
    return groups


def shorten(sentence: str, limit: int = 220) -> str:
    sentence = " ".join(sentence.split())
    if len(sentence) <= limit:
        return sentence
    half = (limit - 5) // 2
    return sentence[:half] + " […] " + sentence[-half:]


def seed_report() -> str:
    seeds = sorted(SEEDS.glob("*.txt"))
    texts = {p.name: p.read_text(encoding="utf-8") for p in seeds}
    splits = {b: {name: SentenceSplitter(backend=b).split(text) for name, text in texts.items()} for b in BACKENDS}
    out = ["| seed | " + " | ".join(BACKENDS) + " |", "|---|" + "---:|" * len(BACKENDS)]
    for name in texts:
        out.append(f"| {name} | " + " | ".join(str(len(splits[b][name])) for b in BACKENDS) + " |")
    out.append("| **total** | " + " | ".join(str(sum(len(v) for v in splits[b].values())) for b in BACKENDS) + " |")
    for backend in BACKENDS[1:]:
        found = [(name, a, b) for name, text in texts.items()
                 for a, b in differences(text, splits["syntok"][name], splits[backend][name])]
        out += ["", f"### {backend} vs syntok: {len(found)} differing stretches"
                    + (f" (first {MAX_DIFFERENCES} shown)" if len(found) > MAX_DIFFERENCES else ""), ""]
        for k, (name, a, b) in enumerate(found[:MAX_DIFFERENCES], 1):
            out.append(f"{k}. `{name}` chars {min(s.start for s in a + b)}-{max(s.end for s in a + b)}")
            out += [f"    - syntok: «{shorten(s.text)}»" for s in a] or ["    - syntok: (nothing)"]
            out += [f"    - {backend}: «{shorten(s.text)}»" for s in b] or [f"    - {backend}: (nothing)"]
    return "\n".join(out)


# --- report -----------------------------------------------------------------------------------------


def versions() -> str:
    parts = []
    for package in BACKENDS:
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package} (not installed)")
    return ", ".join(parts)


def report(ptc_dir: Path, command: str) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Sentence splitters: syntok vs pysbd vs blingfire",
        "",
        f"Command: `{command}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.machine()}, "
        f"nproc {os.cpu_count()}, Python {platform.python_version()}, {versions()}; "
        f"load average at start {load}.",
        "",
        "Every backend runs inside `SentenceSplitter` (newline always ends a sentence, fragment merging, "
        "length cap), so these are the numbers of the pipeline, not of the bare libraries. "
        "A boundary is the end offset of a (whitespace-stripped) sentence, the text end excluded.",
        "",
    ]
    if (ptc_dir / "train").is_dir():
        articles = read_ptc(ptc_dir)
        lines += [f"## (a) PTC dev + train: {len(articles)} articles, one reference sentence per line", ""]
        for title, make_body, note in [
            ("as-is", body_as_is, "Body text with its newlines: our newline rule gives every reference boundary, "
             "so recall is 1 by construction; precision shows the extra splits a backend makes inside lines."),
            ("joined", body_joined, "Non-blank body lines joined with single spaces: the backend must find the "
             "boundaries itself."),
        ]:
            lines += [f"### {title}", "", note, "", ptc_table(evaluate_ptc(articles, make_body)), ""]
        lines += ["Speed is reference sentences per second of splitting time; wall time is inflated when the "
                  "machine is busy (see the load average above), CPU time of this process less so.", ""]
    else:
        lines += [f"## (a) PTC: skipped, {ptc_dir} not found", ""]
    lines += ["## (b) Seed articles (examples/seeds): sentence counts and differences from syntok", "",
              "No gold here: judge the stretches below by reading them.", "", seed_report(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ptc-dir", type=Path, default=None,
                        help="PTC corpus folder with train/ and dev/ (default ../shared/corpus/ptc from the repo root)")
    parser.add_argument("--write", action="store_true", help=f"also write {RESULTS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    ptc_dir = args.ptc_dir if args.ptc_dir is not None else DEFAULT_PTC
    command = "python benchmarks/sentence_splitters.py" + "".join(
        " " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = report(ptc_dir, command)
    print(text)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        if RESULTS.exists() and DECISION in (old := RESULTS.read_text(encoding="utf-8")):
            text += "\n" + old[old.index(DECISION):]
        RESULTS.write_text(text, encoding="utf-8")
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
