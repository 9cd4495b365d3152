"""Verbs of the training stage and of model directories: train, cross-validate, learning-curve, evaluate,
export, info."""

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
) -> None:
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


def cross_validate(
    recipe: Path = typer.Argument(..., help="A recipe TOML file, e.g. training/claim-types.toml."),
    folds: Optional[int] = typer.Option(None, min=2, help="Document-grouped folds (default: the recipe's "
                                        "[evaluation] folds, 5)."),
    by_source: bool = typer.Option(False, "--by-source", help="Leave one source out instead: sources are the "
                                   "recipe's [evaluation] sources (document-id patterns)."),
    out: Optional[Path] = typer.Option(None, help="Folder for report.json, report.md and the finished folds "
                                       "(default: ./crossval-NAME, or ./crossval-NAME-by-source)."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe value: training.epochs=3. Repeatable."),
    resume: bool = typer.Option(True, help="Reuse the folds an earlier run of the same recipe and data finished."),
    only: Optional[str] = typer.Option(None, help="Train only these folds now, comma-separated (fold-1,fold-2, or "
                                       "source names): the report covers the folds finished so far and says so."),
    teacher_set: List[str] = typer.Option([], "--teacher-set", help="Override a value of a [distill] recipe's "
                                          "teacher recipes (--set changes only the student's). Repeatable."),
    keep_models: bool = typer.Option(False, "--keep-models", help="Keep each fold's model in OUT/models, e.g. so "
                                     "that a student's cross-validation reuses them as its fold teachers "
                                     "(distill.teacher_folds_of)."),
) -> None:
    """Cross-validate what a recipe trains: k-fold grouped by document, or leave-one-source-out.
    Reports each label's F1, precision, recall and PR-AUC as mean ± sd over folds, and pooled.
    A [distill] recipe trains its teachers (distill.teacher_recipe) again in every fold, or reuses the
    fold models an earlier cross-validation of them kept (distill.teacher_folds_of)."""
    from stanceclf.train.crossval import cross_validate as run_cross_validation

    names = [name.strip() for name in only.split(",") if name.strip()] if only is not None else None
    if names == []:
        fail(StanceclfError(f"--only {only!r} names no fold; leave it out to run every fold"))
    _run_recipe_report(recipe, set_, out, "crossval-{name}" + ("-by-source" if by_source else ""),
                       lambda loaded, folder: run_cross_validation(loaded, folder, folds=folds, by_source=by_source,
                                                                   only=names, resume=resume,
                                                                   teacher_overrides=teacher_set,
                                                                   keep_models=keep_models))


def _run_recipe_report(recipe: Path, overrides: list[str], out: Optional[Path], default_out: str, run) -> None:
    """Load a recipe, let ``run(recipe, folder)`` write its reports into ``out`` (default: ``default_out``
    in the working directory, ``{name}`` the recipe's) and print ``report.md``."""
    from stanceclf.train.recipe import load_recipe

    try:
        loaded = load_recipe(recipe, overrides)
        out = out or Path.cwd() / default_out.format(name=loaded.name)
        run(loaded, out)
    except StanceclfError as error:
        fail(error)
    typer.echo((out / "report.md").read_text(encoding="utf-8"))
    typer.echo(f"wrote {', '.join(sorted(path.name for path in out.iterdir() if path.is_file()))} in {out}")


def learning_curve(
    recipe: Path = typer.Argument(..., help="A recipe TOML file, e.g. training/claim-types.toml."),
    sizes: str = typer.Option(..., help="Numbers of training articles, comma-separated: 10,25,50,100."),
    folds: Optional[int] = typer.Option(None, min=2, help="Document-grouped folds, each giving one point per size "
                                        "(default: the recipe's [evaluation] folds, 5)."),
    out: Optional[Path] = typer.Option(None, help="Folder for report.json, report.md, learning-curve.png and the "
                                       "finished trainings (default: ./learning-curve-NAME)."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe value: training.epochs=3. Repeatable."),
    resume: bool = typer.Option(True, help="Reuse the trainings an earlier run of the same recipe and data finished."),
    teacher_set: List[str] = typer.Option([], "--teacher-set", help="Override a value of a [distill] recipe's "
                                          "teacher recipes (--set changes only the student's). Repeatable."),
) -> None:
    """Test F1 against the number of training articles (seeded subsets, repeated over folds)."""
    from stanceclf.train.learning_curve import learning_curve as run_learning_curve

    try:
        counts = [int(size) for size in sizes.split(",") if size.strip()]
    except ValueError:
        fail(StanceclfError(f"--sizes {sizes!r} must be whole numbers separated by commas, e.g. 10,25,50"))
    _run_recipe_report(recipe, set_, out, "learning-curve-{name}",
                       lambda loaded, folder: run_learning_curve(loaded, counts, folder, folds=folds, resume=resume,
                                                                 teacher_overrides=teacher_set))


def evaluate(
    model: Path = typer.Argument(..., help="A model directory, or a shipped model's name."),
    dataset: Path = typer.Argument(..., help="A folder written by build-dataset."),
    split: str = typer.Option("test", help="Which split to evaluate."),
    out: Optional[Path] = typer.Option(None, help="Folder for report.json, report.md and PNG plots "
                                       "(default: ./eval-MODEL-SPLIT in the working directory)."),
    backend: str = BACKEND_OPTION,
    fast: bool = FAST_OPTION,
    allow_training_documents: bool = typer.Option(False, help="Evaluate even if the split holds documents the "
                                                  "model was trained on."),
) -> None:
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
    model: Path = typer.Argument(..., help="A model directory, or a shipped model's name."),
    out: Path = typer.Argument(..., help="Where to write a plain transformers directory."),
) -> None:
    """Write a plain transformers directory (float32 safetensors, tokenizer, config) that
    ``transformers.pipeline('text-classification', model=OUT, top_k=None)`` loads. Its scores are
    raw sigmoids, without stanceclf's calibration and thresholds (kept in OUT/stanceclf.json)."""
    from stanceclf.infer.predict import model_path
    from stanceclf.model.directory import export_model_directory

    try:
        export_model_directory(model_path(model), out)
    except StanceclfError as error:
        fail(error)
    typer.echo(f"wrote {out}")


def info(model: Optional[Path] = typer.Argument(
        None, help="A model directory, or a shipped model's name (default: claim-types).")) -> None:
    """Show a model's labels, thresholds, metrics and provenance."""
    from stanceclf.infer.predict import model_path
    from stanceclf.model.manifest import ModelManifest
    from stanceclf.model.metrics import format_metric

    try:
        directory = model_path(model)
        manifest = ModelManifest.read(Path(directory))
    except StanceclfError as error:
        fail(error)
    typer.echo(f"{directory}: schema {manifest.label_schema.name} v{manifest.label_schema.version}, "
               f"base {manifest.base_model}, max_length {manifest.max_length}")
    distilled = manifest.training.get("distillation")
    if distilled:
        teachers = ", ".join(t["path"] + (f" (recipe {t['recipe']})" if t.get("recipe") else "")
                             for t in distilled["teachers"])
        layers = f", layers {distilled['student_layers']} of its base" if distilled.get("student_layers") else ""
        typer.echo(f"  distilled from {teachers} (alpha {distilled['alpha']}{layers})")
    for label in manifest.labels:
        typer.echo(f"  {label}: threshold {manifest.thresholds[label]:.3f}, "
                   f"temperature {manifest.temperatures[label]:.2f}")
    test = manifest.metrics.get("test")
    if test:
        typer.echo(f"  test macro F1 {format_metric(test['macro']['f1'])}, "
                   f"micro F1 {format_metric(test['micro']['f1'])}")
