"""Training and scoring the folds of a plan (:mod:`stanceclf.train.folds`), and the fold records they leave.

Every fold is trained through the training phases (:func:`stanceclf.train.phases.fit_and_calibrate`).
Each finished fold is saved as a JSON record in ``folds/`` (its documents, test logits, labels and each
row's document, temperatures, thresholds and test report; no sentence text), signed by recipe, data and split, and
reused by a rerun with the same signature, so an interrupted run resumes. A record carries the format
it was signed under (``"format"``; none: format 1): a record of another format stays readable
(:func:`read_fold_record`) but is not reused.

A ``[distill]`` recipe is measured as a whole path: in each fold, the teachers' recipes
(``distill.teacher_recipe``) are trained on that fold's training documents first, they score the
unlabelled sentences, and the student learns from them. A teacher trained on all the data would have
seen the fold's test documents.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from stanceclf.data.dataset import built_contexts
from stanceclf.data.schema import LabelSchema, load_schema
from stanceclf.errors import EvaluationError, RecipeError, load_json_object
from stanceclf.files import folder_replaced_atomically, write_atomically
from stanceclf.train.folds import Pool
from stanceclf.train.phases import (data_splitter, distillation_phase, evaluate_logits, fit_and_calibrate,
                                    load_base_tokenizer, prepare_dataset, seeded_base_model)
from stanceclf.train.recipe import Recipe, load_recipe
from stanceclf.train.signature import SIGNATURE_FORMAT, run_signature, signature_format

log = logging.getLogger(__name__)

FOLDS_FOLDER = "folds"
#: Where a fold's teachers are trained (one folder per teacher recipe) and where their scores are cached.
TEACHERS_FOLDER = "teachers"
TEACHER_SCORES_FOLDER = "teacher-scores"


def read_fold_record(path: Path) -> dict:
    """A fold record of any format (:func:`~stanceclf.train.signature.signature_format` tells which);
    :class:`~stanceclf.errors.EvaluationError` when the file is not one."""
    record = load_json_object(path, EvaluationError, "fold record")
    missing = [key for key in ("name", "signature", "documents", "test_report") if key not in record]
    if missing:
        raise EvaluationError(f"not a fold record of stanceclf cross-validate: no {', '.join(missing)}",
                              where=str(path))
    return record


def echo_for(progress: bool) -> Callable[[str], None]:
    """Where fold progress goes: stderr beside the trainer's progress bars, or nowhere."""
    if not progress:
        return lambda message: None

    def echo(message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)

    return echo


@dataclass
class FoldRunner:
    """Trains and scores folds, saving each finished one in ``work_dir`` and reusing it on a rerun.

    ``make_model`` gives a fresh, untrained model per fold; ``tokenizer`` defaults to the recipe base's,
    loaded when a fold first needs it. Distilling, ``teachers`` are the runners of the teachers'
    recipes: each fold trains its teachers on its own documents before the student, and ``splitter``
    splits the unlabelled text.
    """

    recipe: Recipe
    schema: LabelSchema
    pool: Pool
    work_dir: Path
    make_model: Callable
    tokenizer: object
    resume: bool = True
    progress: bool = True
    echo: Callable[[str], None] = field(default=lambda message: None)
    teachers: list["FoldRunner"] = field(default_factory=list)
    splitter: object = None
    #: Sentences of the data that no fold trains or tests on (out-of-fold calibration: the recipe's test
    #: split); distilling, they are left out of the unlabelled ones like every labelled sentence.
    held_back: object = None
    #: Save each fold's model directory (a teacher's: it teaches the fold's student, then is deleted).
    keep_models: bool = False
    #: A teacher whose folds were trained and kept by an earlier cross-validation
    #: (``distill.teacher_folds_of``): reused as they are, never trained here nor deleted.
    borrowed: bool = False

    def __post_init__(self):
        # Absolute: a recipe resolves a relative run_dir against its own folder, not the working directory.
        self.work_dir = Path(self.work_dir).resolve()

    def signature(self, train: list[str], dev: list[str], test: list[str]) -> str:
        """What a saved fold must share with the fold to run: recipe (but paths and the evaluation and
        calibration settings, which only decide the split), data, and which documents go where."""
        recipe = run_signature(self.recipe, self.pool.fingerprint)
        for section in ("evaluation", "calibration"):
            recipe["recipe"].pop(section, None)
        if self.teachers:
            # The fold trains its own teachers (the recipe's finished ones are left out of the signature).
            recipe["teachers"] = [teacher.signature(train, dev, test) for teacher in self.teachers]
        content = json.dumps({**recipe, "train": sorted(train), "dev": sorted(dev), "test": sorted(test)},
                             sort_keys=True)
        return "sha256:" + hashlib.sha256(content.encode()).hexdigest()

    def model_dir(self, name: str) -> Path:
        return self.work_dir / "models" / name

    def record_path(self, name: str) -> Path:
        return self.work_dir / FOLDS_FOLDER / f"{name}.json"

    def run(self, name: str, train: list[str], dev: list[str], test: list[str]) -> dict:
        """The fold's record: test logits and labels, the fold's temperatures, thresholds and test report
        (distilling, also each teacher's test report)."""
        key = self.signature(train, dev, test)
        path = self.record_path(name)
        saved = self._saved(path, key, name)
        if saved is None and self.borrowed:
            raise EvaluationError(
                f"{name} of {self.recipe.name!r} is not finished with a kept model here, for the same data, split "
                f"and recipe: run `stanceclf cross-validate {self.recipe.source} --keep-models --out "
                f"{self.work_dir}` (with the student's --teacher-set options as --set) first",
                where=str(self.work_dir))
        if saved is not None:
            self.echo(f"{name}: reusing the finished fold saved in {path}")
            self._drop_teacher_models(name)  # left by a run stopped between the record and the clean-up
            return saved
        from datasets import DatasetDict

        started = time.time()
        teachers = []
        for teacher in self.teachers:
            done = teacher.finished(name, train, dev, test)
            self.echo(f"{name}: {'reusing the trained' if done else 'training'} teacher {teacher.recipe.name!r} "
                      f"(the fold's {len(train)} training documents)")
            teachers.append(done or teacher.run(name, train, dev, test))
        self.tokenizer = self.tokenizer or load_base_tokenizer(self.recipe.base_model)
        run_dir = self.work_dir / "runs" / name
        recipe = self.recipe.model_copy(update={"run_dir": str(run_dir)})
        data = DatasetDict(train=self.pool.subset(train), dev=self.pool.subset(dev))
        tested = self.pool.subset(test)
        model, train_rows, fingerprint = self.make_model(), None, key
        if self.teachers:
            labelled = DatasetDict(**data, test=tested, **({} if self.held_back is None else
                                                            {"held_back": self.held_back}))
            recipe, distillation = self._distillation(recipe, name, labelled, model)
            # As in train(): a checkpoint resumes only with the very teachers it learned from.
            train_rows, fingerprint = distillation.train_rows, f"{key}+distill:{distillation.signature}"
        model, trainer = fit_and_calibrate(recipe, data, self.schema, model=model, tokenizer=self.tokenizer,
                                           fingerprint=fingerprint, resume=self.resume, progress=self.progress,
                                           train_rows=train_rows)
        logits = model.predict_logits(list(tested["text"]), contexts=built_contexts(tested))
        y_true = np.array(tested["labels"], dtype=int).reshape(len(logits), -1)
        temperatures = [model.manifest.temperatures[l] for l in model.labels]
        record = {
            "format": SIGNATURE_FORMAT, "name": name, "signature": key,
            "documents": {"train": sorted(train), "dev": sorted(dev), "test": sorted(test)},
            "sentences": {"train": len(data["train"]), "dev": len(data["dev"]), "test": len(tested)},
            "temperatures": temperatures, "thresholds": [float(t) for t in model.threshold_vector],
            "test_report": evaluate_logits(logits, y_true, model.labels, temperatures, model.threshold_vector),
            "epochs_run": float(trainer.state.epoch or 0), "wall_seconds": round(time.time() - started, 1),
            "logits": logits.tolist(), "labels": y_true.tolist(),
            # Which document each test row is from: lets two runs' folds be compared on the documents they share.
            "row_documents": list(tested["doc_id"]),
        }
        if teachers:
            record["teachers"] = [{"recipe": runner.recipe.name, "signature": done["signature"],
                                   "test_report": done["test_report"], "wall_seconds": done["wall_seconds"]}
                                  for runner, done in zip(self.teachers, teachers)]
        if trainer.is_world_process_zero():
            if self.keep_models:  # before the record, so a finished fold has its model
                with folder_replaced_atomically(self.model_dir(name)) as folder:
                    model.save_pretrained(folder, storage_dtype=recipe.training.storage_dtype, model_card=False)
            write_atomically(path, json.dumps(record) + "\n")
            # The fold's checkpoints are only needed to resume it, and a full model's are large.
            shutil.rmtree(run_dir, ignore_errors=True)
            if not any(run_dir.parent.iterdir()):
                run_dir.parent.rmdir()
            self._drop_teacher_models(name)
        # Other processes (accelerate launch) go on once the fold's model and record are in place.
        trainer.accelerator.wait_for_everyone()
        del model, trainer
        gc.collect()  # the Trainer holds reference cycles: free this fold's model before the next is made
        return record

    def finished(self, name: str, train: list[str], dev: list[str], test: list[str]) -> dict | None:
        """The fold's saved record if it is finished (and ``resume`` allows reusing it), without training."""
        return self._saved(self.record_path(name), self.signature(train, dev, test), name)

    def _distillation(self, recipe: Recipe, name: str, dataset, model):
        """The student's recipe for this fold (its teachers are the fold's) and its distillation phase.
        ``dataset`` holds the fold's train, dev and test sentences, all left out of the unlabelled ones."""
        distill = recipe.distill.model_copy(update={
            "teacher": [str(teacher.model_dir(name)) for teacher in self.teachers],
            "scores_dir": str(self.work_dir / TEACHER_SCORES_FOLDER)})
        recipe = recipe.model_copy(update={"distill": distill})
        return recipe, distillation_phase(recipe, self.schema, dataset, self.splitter, model, self.progress)

    def _drop_teacher_models(self, name: str) -> None:
        """A fold's teachers are large and teach no other fold: deleted once its student is trained
        (their records stay, with their test figures)."""
        for teacher in self.teachers:
            if not teacher.borrowed:
                shutil.rmtree(teacher.model_dir(name), ignore_errors=True)

    def _saved(self, path: Path, key: str, name: str) -> dict | None:
        if not self.resume or not path.exists():
            return None
        if self.keep_models and not self.model_dir(name).is_dir():
            # A teacher whose student was trained (and which was deleted), or a fold finished without
            # --keep-models, is trained again.
            # A fold teacher's deleted model is expected; a borrowed one's is an error the caller raises.
            if path.exists() and not self.borrowed and self.work_dir.parent.name != TEACHERS_FOLDER:
                log.warning("%s is finished but its model was not kept (%s): it is trained again to keep it",
                            name, self.model_dir(name))
            return None
        try:
            record = read_fold_record(path)
        except EvaluationError as error:
            log.warning("%s; it is not used", error)
            return None
        if signature_format(record) != SIGNATURE_FORMAT:
            log.warning("%s is a fold record of format %d, signed otherwise than this stanceclf signs (format %d): "
                        "it is not reused, the fold is trained again", path, signature_format(record),
                        SIGNATURE_FORMAT)
            return None
        if record["signature"] != key:
            log.warning("%s holds a fold of another recipe, data or split; it is not used", path)
            return None
        return record


@dataclass
class Setup:
    """What every fold of a recipe shares: the schema, the pooled data and the fold runner."""

    recipe: Recipe
    schema: LabelSchema
    pool: Pool
    info: dict
    runner: FoldRunner

    @classmethod
    def of(cls, recipe: Recipe, work_dir: Path, *, make_model=None, tokenizer=None, resume=True, progress=True,
           echo=None, teacher_overrides: list[str] | None = None, keep_models: bool = False,
           borrow_teachers: bool = False) -> "Setup":
        """``make_model`` and ``tokenizer`` replace the recipe's base (a student's; teachers are always
        built from their own recipes, with ``teacher_overrides``). ``keep_models`` saves each fold's model
        in ``work_dir/models`` (to teach a student's folds: ``distill.teacher_folds_of``);
        ``borrow_teachers`` reuses those of ``distill.teacher_folds_of`` (k-fold cross-validation only: other
        plans cut other folds)."""
        schema = load_schema(recipe.schema_path)
        dataset, info, read_report = prepare_dataset(recipe, schema)
        if read_report.skipped:
            log.warning("%s", read_report.summary())
        pool = Pool(dataset, info["fingerprint"])
        echo = echo or echo_for(progress)
        teachers = teacher_runners(recipe, schema, pool, Path(work_dir), resume=resume, progress=progress,
                                   echo=echo, overrides=teacher_overrides, borrow=borrow_teachers
                                   ) if recipe.distill is not None else []
        runner = FoldRunner(recipe, schema, pool, Path(work_dir),
                            make_model or (lambda: seeded_base_model(recipe, schema)),
                            tokenizer, resume, progress, echo, teachers=teachers, splitter=data_splitter(info),
                            keep_models=keep_models)
        return cls(recipe, schema, pool, info, runner)


def teacher_runners(recipe: Recipe, schema: LabelSchema, pool: Pool, work_dir: Path, *, resume: bool,
                    progress: bool, echo: Callable[[str], None], overrides: list[str] | None = None,
                    borrow: bool = False) -> list[FoldRunner]:
    """A [distill] recipe's teachers as fold runners of their recipes (with ``overrides``, like
    ``--set``), on the same pooled data: each fold trains them on its own documents, or with ``borrow``
    reuses the fold models ``distill.teacher_folds_of`` kept. Checked before any fold trains."""
    paths = recipe.distill.teacher_recipes
    if not paths:
        raise RecipeError("cross-validating a [distill] recipe needs distill.teacher_recipe, the recipe of each "
                          "teacher: every fold trains its teachers again on the fold's own training documents "
                          "(the teachers in distill.teacher have seen every fold's test documents)",
                          where=recipe.source)
    borrowed = recipe.distill.teacher_folds if borrow else []
    runners = []
    for number, path in enumerate(paths, 1):
        where = f"{recipe.source}: distill.teacher_recipe {path!r}"
        try:
            teacher = load_recipe(recipe.resolve(path), overrides)
        except RecipeError as error:
            raise RecipeError("the teacher's recipe cannot be used: "
                              + (f"{error.where}: " if error.where else "") + error.detail, where=where) from None
        if teacher.distill is not None:
            raise RecipeError("a teacher's recipe must not have a [distill] section of its own", where=where)
        if load_schema(teacher.schema_path).label_names != schema.label_names:
            raise RecipeError(f"the teacher's schema {teacher.schema_name!r} has other labels (or another order) "
                              f"than the student's {recipe.schema_name!r}", where=where)
        _, info, _ = prepare_dataset(teacher, schema)
        if info["fingerprint"] != pool.fingerprint:
            raise RecipeError(f"the teacher's recipe builds other data ({info['fingerprint']}) than the student's "
                              f"({pool.fingerprint}), so its folds would not be the student's: give both the same "
                              "[data]", where=where)
        folder = (recipe.resolve(borrowed[number - 1]) if borrowed
                  else work_dir / TEACHERS_FOLDER / f"{number}-{teacher.name}")
        if borrowed and not (folder / FOLDS_FOLDER).is_dir():
            raise RecipeError(f"distill.teacher_folds_of {borrowed[number - 1]!r}: {folder} holds no fold records "
                              "of an earlier cross-validation", where=recipe.source)
        # --no-resume retrains the student's folds; borrowed teachers are only ever reused.
        runners.append(FoldRunner(teacher, schema, pool, folder,
                                  lambda teacher=teacher: seeded_base_model(teacher, schema), None,
                                  resume or bool(borrowed), progress, echo, keep_models=True,
                                  borrowed=bool(borrowed)))
    return runners
