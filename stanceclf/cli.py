"""The ``stanceclf`` command line: small verbs, one per stage of the pipeline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import StanceclfError

# rich_markup_mode=None: help texts are shown as written ("[[start, end, label]]" is not markup).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Tag sentences of news and opinion articles with claim types.")
sheets_app = typer.Typer(no_args_is_help=True, help="Sentence sheets for annotating whole articles by hand.")
app.add_typer(sheets_app, name="sheets")


# Shared by the verbs that run a model.
BACKEND_OPTION = typer.Option("torch", help="Forward pass: torch (fp32), bf16 (bfloat16 matrix products, about 1.5x "
                              "fp32 on CPUs with native bfloat16; scores move by up to about 0.02), onnx (ONNX Runtime, "
                              "fused attention; same scores) or auto (the fastest for this CPU).")
FAST_OPTION = typer.Option(False, help="Shorthand for --backend auto.")


def _read_text(path: Path) -> str:
    """A document's text, exactly (CRLF kept), or an error naming the file."""
    from .errors import InputFileError
    from .readers.native import read_text_file

    try:
        return read_text_file(path)
    except UnicodeDecodeError as exc:
        raise InputFileError(f"not valid UTF-8: {exc.reason} at byte {exc.start}", where=str(path)) from None
    except IsADirectoryError:
        raise InputFileError("is a folder; give the files in it", where=str(path)) from None
    except OSError as exc:
        raise InputFileError(exc.strerror or str(exc), where=str(path)) from None


def _fail(error: Exception) -> None:
    typer.secho(str(error), fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _parse_mapping(items: list[str]) -> dict[str, str | None]:
    mapping: dict[str, str | None] = {}
    for item in items:
        if "=" not in item:
            raise StanceclfError(f"label mapping {item!r} must look like RAW=LABEL (or RAW= to drop RAW)")
        raw, label = item.split("=", 1)
        mapping[raw] = label or None
    return mapping


def _parse_ratios(value: str) -> dict[str, float]:
    ratios = {}
    for part in value.split(","):
        name, _, number = part.partition("=")
        try:
            ratios[name.strip()] = float(number)
        except ValueError:
            raise StanceclfError(f"split ratios must look like train=0.8,dev=0.1,test=0.1, got {value!r}") from None
    return ratios


def _formats_help() -> str:
    from .readers import FORMATS

    return "Annotation format: " + "; ".join(f"'{name}' = {text}" for name, text in FORMATS.items())


@app.command("build-dataset")
def build_dataset_command(
    inputs: List[Path] = typer.Argument(..., help="Annotation files or folders."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the dataset to."),
    fmt: str = typer.Option("native", "--format", "-f", help=_formats_help()),
    schema: str = typer.Option("claim-types", help="Schema name (shipped in labels/) or path to a schema TOML."),
    label_map: List[str] = typer.Option([], "--map", help="RAW=LABEL renames a label, RAW= drops it, *=LABEL maps "
                                        "every other label. Repeatable."),
    split: str = typer.Option("train=0.8,dev=0.1,test=0.1", help="Split ratios, grouped by document."),
    seed: int = typer.Option(13, help="Seed of the document split."),
    min_overlap: int = typer.Option(1, help="Characters a span must share with a sentence to label it."),
    export: str = typer.Option("jsonl", help="Exports besides the Arrow dataset: jsonl, parquet, both "
                               "comma-separated, or none."),
    lenient: bool = typer.Option(False, help="Skip bad items and list them, instead of stopping at the first."),
    text_root: Optional[Path] = typer.Option(None, help="native format: folder that document paths are relative to."),
):
    """Turn annotated documents into a sentence-level, multi-label dataset."""
    from .dataset import BuildConfig, build_dataset, format_statistics, save_dataset, statistics
    from .readers import ReadReport, read_annotations
    from .schema import load_schema

    try:
        label_schema = load_schema(schema)
        report = ReadReport()
        options = {"text_root": text_root} if fmt == "native" and text_root else {}
        documents = read_annotations(fmt, inputs, labels=label_schema.label_names, label_map=_parse_mapping(label_map),
                                     strict=not lenient, report=report, **options)
        config = BuildConfig(split_ratios=_parse_ratios(split), seed=seed, min_overlap_chars=min_overlap)
        dataset, info = build_dataset(documents, label_schema, config)
        exports = tuple(e for e in export.split(",") if e and e != "none")
        save_dataset(dataset, info, label_schema, out, export=exports)
    except (StanceclfError, ValueError) as error:
        _fail(error)
    typer.echo(report.summary(), err=True)
    typer.echo(format_statistics(statistics(dataset, label_schema)))
    typer.echo(f"wrote {out}")


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="A recipe TOML file, e.g. training/claim-types.toml."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe value: training.epochs=3. Repeatable."),
    resume: bool = typer.Option(True, help="Continue from the last checkpoint of an interrupted run."),
):
    """Fine-tune a model as a recipe says, calibrate it on dev, and save the model directory."""
    from .recipe import load_recipe

    try:
        loaded = load_recipe(recipe, set_)
    except StanceclfError as error:
        _fail(error)
    from .training import train as run_training

    try:
        model = run_training(loaded, resume=resume)
    except StanceclfError as error:
        _fail(error)
    from .metrics import format_report

    for split, report in model.manifest.metrics.items():
        typer.echo(format_report(report, title=split))
    typer.echo(f"saved {loaded.resolve(loaded.output_dir)}")


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="A model directory."),
    dataset: Path = typer.Argument(..., help="A folder written by build-dataset."),
    split: str = typer.Option("test", help="Which split to evaluate."),
    out: Optional[Path] = typer.Option(None, help="Folder for report.json, report.md and PNG plots "
                                       "(default: MODEL/eval-SPLIT)."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
    allow_training_documents: bool = typer.Option(False, help="Evaluate even if the split holds documents the "
                                                  "model was trained on."),
):
    """Evaluate a model on a built dataset: a table, a JSON report and plots."""
    from .dataset import load_built_dataset
    from .evaluation import evaluate_model, write_evaluation
    from .metrics import format_report
    from .predict import load

    try:
        loaded = load(model, fast="auto" if fast else backend)
        data, info = load_built_dataset(dataset)
        if split not in data:
            raise StanceclfError(f"no split {split!r}; the dataset has {list(data)}", where=str(dataset))
        dataset_labels = [label["name"] for label in info["schema"]["labels"]]
        if dataset_labels != loaded.labels:
            raise StanceclfError(f"the dataset's labels {dataset_labels} are not the model's {loaded.labels}")
        report, y_true, probs = evaluate_model(loaded, data[split],
                                               allow_training_documents=allow_training_documents)
        written = write_evaluation(report, y_true, probs, loaded.labels, loaded.threshold_vector,
                                   out or Path(model) / f"eval-{split}")
    except StanceclfError as error:
        _fail(error)
    typer.echo(format_report(report, title=f"{dataset} [{split}]"))
    seen = report["documents_seen_in_training"]
    if seen["train"] or seen["dev"]:
        typer.echo(f"note: {seen['train']} document(s) of this split were in the model's training split and "
                   f"{seen['dev']} in its dev split (which tuned its thresholds)", err=True)
    typer.echo(f"ECE {report['ece']:.4f}; wrote " + ", ".join(str(p) for p in written))


@app.command()
def classify(
    files: List[Path] = typer.Argument(None, help="Text files to classify (default: read standard input)."),
    model: Optional[Path] = typer.Option(None, help="Model directory (default: the shipped model)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per sentence instead of a table."),
    all_sentences: bool = typer.Option(False, "--all", help="Show sentences without labels too."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
):
    """Classify the sentences of a few documents and print them."""
    from .predict import load

    try:
        loaded = load(model, fast="auto" if fast else backend)
        # Newlines untouched (CRLF stays CRLF), so that offsets match `stanceclf score` and the file.
        sources = ([(str(f), _read_text(f)) for f in files] if files
                   else [("<stdin>", sys.stdin.buffer.read().decode("utf-8"))])
    except (StanceclfError, UnicodeDecodeError) as error:
        _fail(error)
    results = loaded.classify([text for _, text in sources])
    for (name, _), predictions in zip(sources, results):
        if not as_json:
            typer.secho(f"== {name}: {len(predictions)} sentences", bold=True)
        for index, p in enumerate(predictions):
            if as_json:
                typer.echo(json.dumps({"file": name, "sentence_index": index, **p.to_dict()}, ensure_ascii=False))
            elif p.labels or all_sentences:
                scores = " ".join(f"{label[:6]}={score:.2f}" for label, score in p.scores.items())
                tags = ",".join(p.labels) or "-"
                typer.echo(f"[{index:>3}] {tags:<36} {scores}  {p.text[:110]}")


@app.command()
def score(
    inputs: List[Path] = typer.Argument(..., help="Folders of .txt files, or JSONL, CSV or Parquet files."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .jsonl, .csv or .parquet."),
    model: Optional[Path] = typer.Option(None, help="Model directory (default: the shipped model)."),
    input_format: str = typer.Option("auto", help="auto, txt, jsonl, csv or parquet."),
    id_field: Optional[str] = typer.Option(None, help="Field holding the document id (JSONL, CSV, Parquet). "
                                           "Default: 'id' where present, else FILE:LINE. When given, a record "
                                           "without it is a bad record."),
    text_field: str = typer.Option("text", help="Field holding the document text (JSONL, CSV, Parquet)."),
    per_document: bool = typer.Option(False, help="One row per document with counts and shares per label."),
    on_error: str = typer.Option("stop", help="On a bad record: 'stop' with its name, or 'skip' it and log it to "
                                 "OUT.errors.jsonl."),
    max_chars: int = typer.Option(1_000_000, help="Longest document accepted, in characters."),
    batch_size: int = typer.Option(64, help="Sentences per forward pass."),
    threads: Optional[int] = typer.Option(None, help="Torch threads (default: torch's choice, one per core)."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
    overwrite: bool = typer.Option(False, help="Start again even if OUT or an interrupted run exists."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Score a corpus into one row per sentence (or per document). Interrupted runs resume."""
    from .predict import load
    from .scoring import score_corpus

    if on_error not in ("stop", "skip"):
        _fail(StanceclfError(f"--on-error must be stop or skip, not {on_error!r}"))
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        loaded = load(model, fast="auto" if fast else backend)
        summary = score_corpus(inputs, out, loaded, input_format=input_format, id_field=id_field,
                               text_field=text_field, per_document=per_document, on_error=on_error,
                               max_chars=max_chars, batch_size=batch_size, overwrite=overwrite, progress=progress,
                               log=lambda message: typer.echo(message, err=True))
    except StanceclfError as error:
        _fail(error)
    except KeyboardInterrupt:
        typer.echo("interrupted: run the same command again to resume", err=True)
        raise typer.Exit(code=130)
    scored_now = summary.sentences - summary.resumed_sentences
    rate = scored_now / summary.seconds if summary.seconds else 0.0
    typer.echo(f"scored {summary.documents} documents, {summary.sentences} sentences "
               f"({rate:.0f} sentences/s this run); skipped {summary.skipped} bad records; "
               f"{summary.truncated} sentences truncated at {loaded.max_length} tokens; wrote {out}", err=True)


@app.command()
def export(
    model: Path = typer.Argument(..., help="A model directory."),
    out: Path = typer.Argument(..., help="Where to write a plain transformers directory."),
):
    """Write a plain transformers directory (float32 safetensors, tokenizer, config) that
    ``transformers.pipeline('text-classification', model=OUT, top_k=None)`` loads."""
    import torch

    from .predict import load

    try:
        loaded = load(model)
    except StanceclfError as error:
        _fail(error)
    out.mkdir(parents=True, exist_ok=True)
    loaded.model.to(torch.float32).save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
    loaded.manifest.write(out)
    typer.echo(f"wrote {out}")


@app.command()
def info(model: Optional[Path] = typer.Argument(None, help="A model directory (default: the shipped model).")):
    """Show a model's labels, thresholds, metrics and provenance."""
    from .model import ModelManifest
    from .predict import default_model_path

    try:
        directory = model or default_model_path()
        manifest = ModelManifest.read(Path(directory))
    except StanceclfError as error:
        _fail(error)
    typer.echo(f"{directory}: schema {manifest.label_schema.name} v{manifest.label_schema.version}, "
               f"base {manifest.base_model}, max_length {manifest.max_length}")
    for label in manifest.labels:
        typer.echo(f"  {label}: threshold {manifest.thresholds[label]:.3f}, "
                   f"temperature {manifest.temperatures[label]:.2f}")
    test = manifest.metrics.get("test")
    if test:
        typer.echo(f"  test macro F1 {test['macro']['f1']:.3f}, micro F1 {test['micro']['f1']:.3f}")


@app.command()
def agreement(
    first: Path = typer.Argument(..., help="One annotator's annotations (native format)."),
    second: Path = typer.Argument(..., help="The other annotator's annotations of the same documents."),
    schema: str = typer.Option("claim-types", help="Schema name or path."),
):
    """Sentence-level agreement between two annotations: F1 and Cohen's kappa per label."""
    from .agreement import format_agreement, sentence_agreement
    from .readers import read_annotations
    from .schema import load_schema

    try:
        label_schema = load_schema(schema)
        a = read_annotations("native", first, labels=label_schema.label_names)
        b = read_annotations("native", second, labels=label_schema.label_names)
        typer.echo(format_agreement(sentence_agreement(a, b, label_schema)))
    except StanceclfError as error:
        _fail(error)


@sheets_app.command("export")
def sheets_export(
    texts: List[Path] = typer.Argument(..., help="Text files (or folders of .txt) to annotate."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the sheets (keep it out of git if the texts "
                             "may not be redistributed)."),
    schema: str = typer.Option("claim-types", help="Schema name or path (its label codes head each sheet)."),
):
    """Write numbered sentence sheets for annotators."""
    from .annotation_sheets import export_sheets
    from .schema import load_schema

    try:
        files = [p for t in texts for p in (sorted(t.glob("*.txt")) if t.is_dir() else [t])]
        count = export_sheets({f.stem: _read_text(f) for f in files}, out, schema=load_schema(schema))
    except (StanceclfError, OSError) as error:
        _fail(error)
    typer.echo(f"wrote {len(files)} sheets with {count} sentences to {out}")


@sheets_app.command("import")
def sheets_import(
    decisions: Path = typer.Argument(..., help="Folder of <doc_id>.tsv decision files."),
    sheets: Path = typer.Option(..., help="Folder with the <doc_id>.offsets.json files of the sheets."),
    texts: Path = typer.Option(..., help="Folder with the <doc_id>.txt documents."),
    annotator: str = typer.Option(..., help="Who decided these labels (stored with every span)."),
    out: Path = typer.Option(..., "--out", "-o", help="Native stand-off JSONL to write."),
    schema: str = typer.Option("claim-types", help="Schema name or path."),
):
    """Turn an annotator's decision files into stand-off annotations (text referenced, not copied)."""
    from .annotation_sheets import import_decisions
    from .errors import InputFileError
    from .readers import write_native
    from .schema import load_schema

    try:
        label_schema = load_schema(schema)
        documents, paths = [], {}
        files = sorted(decisions.glob("*.tsv")) if decisions.is_dir() else []
        if not files:
            raise InputFileError("no <doc_id>.tsv decision files here", where=str(decisions))
        for file in files:
            text_path = texts / f"{file.stem}.txt"
            document, _ = import_decisions(file, sheets / f"{file.stem}.offsets.json", _read_text(text_path),
                                           label_schema, annotator)
            documents.append(document)
            paths[document.doc_id] = text_path
        write_native(documents, out, text_paths=paths)
    except (StanceclfError, OSError) as error:
        _fail(error)
    typer.echo(f"wrote {len(documents)} documents to {out}")


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
