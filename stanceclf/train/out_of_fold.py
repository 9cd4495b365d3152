"""Out-of-fold calibration, a phase of :func:`stanceclf.train.trainer.train` for recipes with
``[calibration] thresholds = "cross-validation"``: the saved model's temperatures and thresholds are
fitted on out-of-fold predictions over all training documents instead of on the dev split alone."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np

from stanceclf.data.schema import LabelSchema
from stanceclf.train.calibration import calibrate
from stanceclf.train.fold_reports import summarise
from stanceclf.train.fold_runner import FoldRunner, echo_for, teacher_runners
from stanceclf.train.folds import Pool, kfold_plan
from stanceclf.train.phases import evaluate_logits
from stanceclf.train.recipe import Recipe

#: Where the out-of-fold trainings of a run are saved (and reused), inside its run folder.
OUT_OF_FOLD_FOLDER = "oof-calibration"


@dataclass
class OutOfFoldCalibration:
    """Temperatures and thresholds fitted on out-of-fold predictions, and what the manifest records."""

    fitted: tuple[np.ndarray, np.ndarray]
    record: dict


def recipe_calibration(recipe: Recipe, dataset, schema: LabelSchema, *, model, tokenizer, fingerprint: str,
                       resume: bool = True, progress: bool = True, make_model: Callable | None = None,
                       splitter=None) -> OutOfFoldCalibration | None:
    """With ``[calibration] thresholds = "cross-validation"``: ``folds`` trainings on the train split's
    documents, each tested on the fold it left out (dev stays the early-stopping split), and
    :func:`~stanceclf.train.calibration.calibrate` applied to the pooled out-of-fold logits.
    ``None`` for ``"dev"`` (the trainer fits on dev as before).

    Each fold starts from a copy of ``model`` (still untrained: the final model starts there too)
    unless ``make_model`` is given. Folds are saved in ``run_dir/oof-calibration`` and reused. A
    [distill] recipe's folds train their own teachers (``distill.teacher_recipe``) first, and split
    the unlabelled text with ``splitter``.
    """
    settings = recipe.calibration
    if settings.thresholds != "cross-validation":
        return None
    from datasets import DatasetDict

    pool = Pool(DatasetDict(train=dataset["train"], dev=dataset["dev"]), fingerprint)
    train_docs, dev_docs = sorted(set(dataset["train"]["doc_id"])), sorted(set(dataset["dev"]["doc_id"]))
    work_dir, echo = recipe.run_path / OUT_OF_FOLD_FOLDER, echo_for(progress)
    teachers = teacher_runners(recipe, schema, pool, work_dir, resume=resume, progress=progress,
                               echo=echo) if recipe.distill is not None else []
    runner = FoldRunner(recipe, schema, pool, work_dir, make_model or (lambda: copy.deepcopy(model)), tokenizer,
                        resume, progress, echo, teachers=teachers, splitter=splitter,
                        held_back=dataset["test"] if "test" in dataset else None)
    plan = kfold_plan(pool, settings.folds, recipe.seed, documents=train_docs)
    records = []
    for number, fold in enumerate(plan, 1):
        runner.echo(f"out-of-fold calibration, fold {number}/{len(plan)}: "
                    f"{len(train_docs) - len(fold.test)} training documents, {len(fold.test)} held out")
        records.append(runner.run(fold.name, sorted(set(train_docs) - set(fold.test)), dev_docs, fold.test))
    labels = schema.label_names
    logits = np.concatenate([np.asarray(r["logits"]).reshape(-1, len(labels)) for r in records])
    y_true = np.concatenate([np.asarray(r["labels"], dtype=int).reshape(-1, len(labels)) for r in records])
    temperatures, thresholds = calibrate(logits, y_true)
    record = {"method": "cross-validation", "folds": len(plan), "documents": len(train_docs),
              "sentences": int(len(y_true)),
              # Fitted and scored on the same predictions: an optimistic figure, kept to compare with dev's.
              "out_of_fold": evaluate_logits(logits, y_true, labels, temperatures, thresholds),
              "cross_validated": summarise(records, labels)}
    return OutOfFoldCalibration((temperatures, thresholds), record)
