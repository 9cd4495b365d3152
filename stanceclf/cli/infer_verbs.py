"""Verbs of the inference stage: classify a few documents, score a corpus."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from stanceclf.cli.common import BACKEND_OPTION, FAST_OPTION, PROGRESS_OPTION, fail, load_model
from stanceclf.errors import StanceclfError
from stanceclf.infer.scoring.job import SCORE_DEFAULTS


def classify(
    files: List[Path] = typer.Argument(None, help="Text files to classify (default: read standard input)."),
    model: Optional[Path] = typer.Option(None, help="Model directory, or a shipped model's name such as "
                                            "claim-types-student (default: claim-types)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per sentence (the rows of 'stanceclf "
                                 "score', with the file as doc_id) instead of a table."),
    all_sentences: bool = typer.Option(False, "--all", help="Show sentences without labels too (--json always "
                                       "prints every sentence)."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
) -> None:
    """Classify the sentences of a few documents and print them: a table on a terminal, tab-separated
    lines (a header, then one line per sentence) when the output is a pipe or a file."""
    from rich.console import Console

    from stanceclf.cli.render import render_classified
    from stanceclf.data.documents import decode_document_text, read_document_text
    from stanceclf.infer.results import RowSpec

    try:
        loaded = load_model(model, backend, fast)
        # The one document-reading rule, so that offsets match `stanceclf score` and the annotation readers.
        sources = ([(str(f), read_document_text(f)) for f in files] if files
                   else [("<stdin>", decode_document_text(sys.stdin.buffer.read(), "<stdin>")[0])])
    except StanceclfError as error:
        fail(error)
    results = _classify_with_progress(loaded, [text for _, text in sources])
    if as_json:  # every sentence: machine output is complete
        spec = RowSpec(tuple(loaded.labels))
        for (name, _), predictions in zip(sources, results):
            for row in spec.rows(name, predictions):
                typer.echo(json.dumps(row, ensure_ascii=False))
        return
    render_classified(Console(highlight=False), [(name, p) for (name, _), p in zip(sources, results)],
                      loaded.labels, loaded.thresholds, all_sentences=all_sentences)


#: Input characters (about 1,500 sentences) from which classify shows progress on a terminal.
LONG_INPUT_CHARS = 200_000


def _classify_with_progress(loaded, texts: list[str], console=None):
    """Classify ``texts``; on a terminal, a long input shows a bar per document finished (on ``console``,
    by default standard error)."""
    from stanceclf.progress import wants_progress

    total = sum(map(len, texts))
    if console is None and not wants_progress(total, long_work=LONG_INPUT_CHARS):
        return loaded.classify(texts)
    from rich.console import Console
    from rich.progress import Progress

    results = []
    with Progress(console=console or Console(stderr=True), transient=True) as progress:
        task = progress.add_task("classifying", total=total)
        for text in texts:
            results.append(loaded.classify(text))
            progress.advance(task, len(text))
    return results


def score(
    inputs: List[Path] = typer.Argument(..., help="Folders of .txt files, or JSONL, CSV or Parquet files."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .jsonl, .csv or .parquet."),
    model: Optional[Path] = typer.Option(None, help="Model directory, or a shipped model's name such as "
                                            "claim-types-student (default: claim-types)."),
    input_format: str = typer.Option("auto", help="auto, txt, jsonl, csv or parquet."),
    id_field: Optional[str] = typer.Option(None, help="Field holding the document id (JSONL, CSV, Parquet). "
                                           "Default: 'id' where present, else FILE:LINE. When given, a record "
                                           "without it is a bad record. Ids must be unique."),
    text_field: str = typer.Option("text", help="Field holding the document text (JSONL, CSV, Parquet)."),
    per_document: bool = typer.Option(False, help="One row per document with counts and shares per label."),
    on_error: str = typer.Option("stop", help="On a bad record: 'stop' with its name, or 'skip' it and log it to "
                                 "OUT.errors.jsonl."),
    max_chars: int = typer.Option(SCORE_DEFAULTS.max_chars, help="Longest document accepted, in characters."),
    batch_size: int = typer.Option(SCORE_DEFAULTS.batch_size, help="Sentences per forward pass."),
    threads: Optional[int] = typer.Option(None, help="Torch threads (default: torch's choice, one per core)."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
    overwrite: bool = typer.Option(False, help="Start again even if OUT or an interrupted run exists."),
    progress: bool = PROGRESS_OPTION,
    engine: str = typer.Option("local", help="local: this machine, resumable; ray: a Ray cluster (same rows, "
                               "not resumable; needs pip install 'stanceclf[ray]')."),
    address: Optional[str] = typer.Option(None, help="--engine ray: the cluster: auto (the one this machine "
                                          "belongs to), ray://HEAD:10001 (Ray Client), HOST:PORT, or local (a new "
                                          "one here). Default: $RAY_ADDRESS, else a new local one."),
    actors: Optional[int] = typer.Option(None, help="--engine ray: scoring actors (default: the cluster's CPUs "
                                         "divided by --cpus-per-actor)."),
    cpus_per_actor: float = typer.Option(1.0, help="--engine ray: CPUs (and torch threads) per actor."),
) -> None:
    """Score a corpus into one row per sentence (or per document). Interrupted local runs resume."""
    try:
        run_on = _scoring_engine(engine, threads, address, actors, cpus_per_actor)
        if threads:
            import torch

            torch.set_num_threads(threads)
        loaded = load_model(model, backend, fast)
        summary = run_on(inputs, out, loaded, input_format=input_format, id_field=id_field,
                         text_field=text_field, per_document=per_document, on_error=on_error,
                         max_chars=max_chars, batch_size=batch_size, overwrite=overwrite, progress=progress,
                         log=lambda message: typer.echo(message, err=True))
    except StanceclfError as error:
        fail(error)
    except KeyboardInterrupt:
        typer.echo("interrupted: run the same command again to " +
                   ("resume" if engine == "local" else "start over (the Ray engine does not resume)"), err=True)
        raise typer.Exit(code=130)
    scored_now = summary.sentences - summary.resumed_sentences
    rate = scored_now / summary.seconds if summary.seconds else 0.0
    typer.echo(f"scored {summary.documents} documents, {summary.sentences} sentences "
               f"({rate:.0f} sentences/s this run); skipped {summary.skipped} bad records; "
               f"{summary.truncated} sentences truncated at {loaded.max_length} tokens; wrote {out}", err=True)


def _scoring_engine(engine: str, threads, address, actors, cpus_per_actor: float):
    """The scoring function of ``--engine``, with its own options bound; the other engine's options refused."""
    from functools import partial

    from stanceclf.errors import ScoringSetupError
    from stanceclf.infer.scoring import score_corpus

    if engine == "local":
        if address is not None or actors is not None or cpus_per_actor != 1.0:
            raise ScoringSetupError("--address, --actors and --cpus-per-actor apply to --engine ray")
        return score_corpus
    if engine != "ray":
        raise ScoringSetupError(f"unknown engine {engine!r}: use local or ray")
    if threads:
        raise ScoringSetupError("--threads applies to --engine local; on Ray use --cpus-per-actor")
    from stanceclf.infer.ray_engine import import_ray, score_corpus_on_ray

    import_ray()  # before the model loads: a missing Ray is said at once
    return partial(score_corpus_on_ray, address=address, actors=actors, cpus_per_actor=cpus_per_actor)
