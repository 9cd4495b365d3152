"""Verbs of the training stage and of model directories: train, evaluate, export, info."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from stanceclf.cli.common import BACKEND_OPTION, FAST_OPTION, fail, load_model
from stanceclf.errors import StanceclfError


def train(
    recipe: Path = typer.Argument(..., help="A recipe TOML file, e.g. training/claim-types.toml."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe value: training.epochs=3. Repeatable."),
    resume: bool = typer.Option(True, help="Continue from the last checkpoint of an interrupted run."),
):
    """Fine-tune a model as a recipe says, calibrate it on dev, and save the model directory."""
    from stanceclf.model.metrics import format_report
    from stanceclf.train.recipe import load_recipe
    from stanceclf.train.trainer import train as run_training

    try:
        loaded = load_recipe(recipe, set_)
        model = run_training(loaded, resume=resume)
    except StanceclfError as error:
        fail(error)
    for split, report in model.manifest.metrics.items():
        typer.echo(format_report(report, title=split))
    typer.echo(f"saved {loaded.resolve(loaded.output_dir)}")


def evaluate(
    model: Path = typer.Argument(..., help="A model directory."),
    dataset: Path = typer.Argument(..., help="A folder written by build-dataset."),
    split: str = typer.Option("test", help="Which split to evaluate."),
    out: Optional[Path] = typer.Option(None, help="Folder for report.json, report.md and PNG plots "
                                       "(default: ./eval-MODEL-SPLIT in the working directory)."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
    allow_training_documents: bool = typer.Option(False, help="Evaluate even if the split holds documents the "
                                                  "model was trained on."),
):
    """Evaluate a model on a built dataset: a table, a JSON report and plots."""
    from stanceclf.train.evaluation import evaluate_on_dataset
    from stanceclf.model.metrics import format_report

    try:
        report, written = evaluate_on_dataset(load_model(model, backend, fast), dataset, split=split, out=out,
                                              allow_training_documents=allow_training_documents)
    except StanceclfError as error:
        fail(error)
    typer.echo(format_report(report, title=f"{dataset} [{split}]"))
    seen = report["documents_seen_in_training"]
    if seen["train"] or seen["dev"]:
        typer.echo(f"note: {seen['train']} document(s) of this split were in the model's training split and "
                   f"{seen['dev']} in its dev split (which tuned its thresholds)", err=True)
    typer.echo(f"ECE {report['ece']:.4f}; wrote " + ", ".join(str(p) for p in written))


def export(
    model: Path = typer.Argument(..., help="A model directory."),
    out: Path = typer.Argument(..., help="Where to write a plain transformers directory."),
):
    """Write a plain transformers directory (float32 safetensors, tokenizer, config) that
    ``transformers.pipeline('text-classification', model=OUT, top_k=None)`` loads. Its scores are
    raw sigmoids, without stanceclf's calibration and thresholds (kept in OUT/stanceclf.json)."""
    from stanceclf.model.directory import export_model_directory

    try:
        export_model_directory(model, out)
    except StanceclfError as error:
        fail(error)
    typer.echo(f"wrote {out}")


def info(model: Optional[Path] = typer.Argument(None, help="A model directory (default: the shipped model).")):
    """Show a model's labels, thresholds, metrics and provenance."""
    from stanceclf.infer.predict import default_model_path
    from stanceclf.model.manifest import ModelManifest
    from stanceclf.model.metrics import format_metric

    try:
        directory = model or default_model_path()
        manifest = ModelManifest.read(Path(directory))
    except StanceclfError as error:
        fail(error)
    typer.echo(f"{directory}: schema {manifest.label_schema.name} v{manifest.label_schema.version}, "
               f"base {manifest.base_model}, max_length {manifest.max_length}")
    distilled = manifest.training.get("distillation")
    if distilled:
        teachers = ", ".join(t["path"] for t in distilled["teachers"])
        layers = f", layers {distilled['student_layers']} of its base" if distilled.get("student_layers") else ""
        typer.echo(f"  distilled from {teachers} (alpha {distilled['alpha']}{layers})")
    for label in manifest.labels:
        typer.echo(f"  {label}: threshold {manifest.thresholds[label]:.3f}, "
                   f"temperature {manifest.temperatures[label]:.2f}")
    test = manifest.metrics.get("test")
    if test:
        typer.echo(f"  test macro F1 {format_metric(test['macro']['f1'])}, "
                   f"micro F1 {format_metric(test['micro']['f1'])}")
