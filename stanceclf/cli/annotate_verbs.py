"""Verbs of the annotation loop with Label Studio: suggest documents to annotate, print the labelling config."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from stanceclf.cli.common import BACKEND_OPTION, FAST_OPTION, PROGRESS_OPTION, fail, load_model
from stanceclf.errors import StanceclfError
from stanceclf.infer.scoring.job import SCORE_DEFAULTS


def suggest(
    inputs: List[Path] = typer.Argument(..., help="The corpus: folders of .txt files, or JSONL, CSV or Parquet "
                                        "files (read as 'stanceclf score' reads them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Label Studio tasks to write (JSON), to import into a project "
                             "made with 'stanceclf labelstudio-config'."),
    strategy: str = typer.Option("uncertainty", help="uncertainty: scores closest to the thresholds; disagreement: "
                                 "dropout passes that decide labels differently from the model; flagged: sentences "
                                 "the model labels (where its false positives are); random: a seeded sample. Each "
                                 "document's priority is the mean over its sentences."),
    n: int = typer.Option(50, "--n", help="Documents to pick."),
    model: Optional[Path] = typer.Option(None, help="Model directory, or a shipped model's name such as "
                                            "claim-types-student (default: claim-types)."),
    seed: int = typer.Option(13, help="Seed of the random strategy, of --sample and of the dropout passes."),
    passes: int = typer.Option(8, help="disagreement: forward passes with dropout on."),
    exclude: List[Path] = typer.Option([], help="Documents not to suggest again, e.g. earlier rounds: Label Studio "
                                       "task files or exports (data.doc_id), or stand-off annotations (.jsonl, as "
                                       "'sheets import' writes them: doc_id and record). Repeatable."),
    sample: Optional[int] = typer.Option(None, help="Score only a seeded sample (--seed) of this many documents, "
                                         "drawn after --exclude and --min-chars: for a pool too large to score "
                                         "whole. At least --n."),
    min_chars: int = typer.Option(0, help="Pass over documents shorter than this many characters (captions, "
                                  "briefs: a short one tops a mean over its sentences)."),
    input_format: str = typer.Option("auto", help="auto, txt, jsonl, csv or parquet."),
    id_field: Optional[str] = typer.Option(None, help="Field holding the document id (JSONL, CSV, Parquet); "
                                           "default 'id' where present, else FILE:LINE."),
    text_field: str = typer.Option("text", help="Field holding the document text (JSONL, CSV, Parquet)."),
    on_error: str = typer.Option("stop", help="On a bad record: 'stop' with its name, or 'skip' it and log it to "
                                 "OUT.errors.jsonl."),
    max_chars: int = typer.Option(SCORE_DEFAULTS.max_chars, help="Longest document accepted, in characters."),
    batch_size: int = typer.Option(SCORE_DEFAULTS.batch_size, help="Sentences per forward pass."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
    overwrite: bool = typer.Option(False, help="Start again even if OUT or an interrupted run exists."),
    blind: bool = typer.Option(False, help="Tasks without the model's labels or priority, for annotators who must "
                               "decide unprompted."),
    progress: bool = PROGRESS_OPTION,
) -> None:
    """Pick the documents most worth annotating next and write them as pre-annotated Label Studio tasks.
    Interrupted runs resume."""
    from stanceclf.infer.suggest import annotated_ids, suggest as pick

    try:
        loaded = load_model(model, backend, fast)
        summary = pick(inputs, loaded, strategy=strategy, n=n, seed=seed, input_format=input_format,
                       id_field=id_field, text_field=text_field, max_chars=max_chars, on_error=on_error,
                       exclude=annotated_ids(exclude), sample=sample, min_chars=min_chars, passes=passes,
                       batch_size=batch_size, out=out,
                       overwrite=overwrite, blind=blind, progress=progress, log=lambda message: typer.echo(message, err=True))
    except StanceclfError as error:
        fail(error)
    except KeyboardInterrupt:
        typer.echo("interrupted: run the same command again to resume", err=True)
        raise typer.Exit(code=130)
    priorities = [s.priority for s in summary.suggestions]
    resumed = f"; the interrupted run had done {summary.resumed_from} records" if summary.resumed_from else ""
    passed = "".join([f", {summary.short} shorter than --min-chars" if min_chars else "",
                      f", {summary.unsampled} outside the sample" if sample is not None else ""])
    typer.echo(f"read {summary.documents} documents (excluded {summary.excluded}{passed}, skipped {summary.skipped} "
               f"bad records{resumed}); wrote {len(priorities)} tasks to {out}, {strategy} priority {max(priorities):.3f} "
               f"to {min(priorities):.3f}", err=True)


def labelstudio_config(
    schema: str = typer.Option("claim-types", help="Schema name (shipped in labels/) or path to a schema TOML."),
    text_field: str = typer.Option("text", help="Task data key of the document text ($text in the config)."),
) -> None:
    """Print the Label Studio labelling config of a schema (paste it into the project's Labeling Interface)."""
    from stanceclf.data.label_studio_config import labelling_config
    from stanceclf.data.schema import load_schema

    try:
        typer.echo(labelling_config(load_schema(schema), text_field=text_field))
    except StanceclfError as error:
        fail(error)
