"""Cross-validation of what a recipe trains: generalisation measured over many splits, not one.

- :func:`cross_validate`: document-grouped k-fold (folds balanced on each label's positives by
  :func:`stanceclf.data.dataset.assign_folds`), or leave-one-source-out with sources defined by
  document-id patterns (``[evaluation] sources``). Each fold's documents are its test set; the
  other documents are split into train and dev (early stopping, temperatures and thresholds) by
  :func:`stanceclf.data.dataset.assign_splits`, grouped by document and balanced. The report gives
  mean and standard deviation over folds, and the pooled out-of-fold figures.
- :func:`recipe_calibration`: with ``[calibration] thresholds = "cross-validation"``, ``train``
  fits the saved model's temperatures and thresholds on out-of-fold predictions over all training
  documents instead of on the dev split alone.

Every fold is trained through the trainer's own phases (:func:`stanceclf.train.trainer.fit_and_calibrate`).
Each finished fold is saved as JSON beside the report (its test logits, labels, thresholds and report)
and reused by a rerun with the same recipe, data and split, so an interrupted run resumes.

A ``[distill]`` recipe is measured as a whole path: in each fold, the teachers' recipes
(``distill.teacher_recipe``) are trained on that fold's training documents first, they score the
unlabelled sentences, and the student learns from them. A teacher trained on all the data would have
seen the fold's test documents. The teachers' own fold figures are reported beside the student's.
"""

from __future__ import annotations

import copy
import fnmatch
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

from stanceclf.data.dataset import assign_folds, assign_splits
from stanceclf.data.schema import LabelSchema, load_schema
from stanceclf.errors import EvaluationError, RecipeError
from stanceclf.model.decision import decide, probabilities
from stanceclf.model.metrics import expected_calibration_error, format_metric, format_report, multilabel_report
from stanceclf.train.calibration import calibrate
from stanceclf.train.recipe import Recipe, load_recipe
from stanceclf.train.trainer import (_evaluate_logits, _run_signature, data_splitter, distillation_phase,
                                     fit_and_calibrate, load_base_tokenizer, prepare_dataset, seeded_base_model)

log = logging.getLogger(__name__)

#: The figures averaged over folds, per label and macro-averaged.
METRICS = ("f1", "precision", "recall", "pr_auc")
FOLDS_FOLDER = "folds"
#: Where a fold's teachers are trained (one folder per teacher recipe) and where their scores are cached.
TEACHERS_FOLDER = "teachers"
TEACHER_SCORES_FOLDER = "teacher-scores"


class Pool:
    """Every sentence of some splits of a dataset, addressed by document."""

    def __init__(self, dataset, fingerprint: str):
        from datasets import concatenate_datasets

        self.rows = concatenate_datasets([dataset[name] for name in dataset])
        self.fingerprint = fingerprint
        self.rows_of: dict[str, list[int]] = {}
        for index, doc_id in enumerate(self.rows["doc_id"]):
            self.rows_of.setdefault(doc_id, []).append(index)
        labels = self.rows["labels"]
        self._labels = {doc: [{"labels": labels[i]} for i in rows] for doc, rows in self.rows_of.items()}

    @property
    def documents(self) -> list[str]:
        return sorted(self.rows_of)

    def examples(self, doc_ids) -> dict[str, list[dict]]:
        """What the balanced assignments count: each document's label rows."""
        return {doc: self._labels[doc] for doc in doc_ids}

    def subset(self, doc_ids):
        return self.rows.select([i for doc in sorted(doc_ids) for i in self.rows_of[doc]])

    def split_dev(self, doc_ids, dev_fraction: float, seed: int) -> tuple[list[str], list[str]]:
        """``doc_ids`` as (train, dev), grouped by document and balanced like the dataset's own splits."""
        assignment = assign_splits(self.examples(doc_ids), {"train": 1 - dev_fraction, "dev": dev_fraction}, seed)
        train = sorted(d for d, split in assignment.items() if split == "train")
        dev = sorted(d for d, split in assignment.items() if split == "dev")
        if not train or not dev:
            raise EvaluationError(f"{len(doc_ids)} document(s) cannot be split into train and dev "
                                  f"(dev fraction {dev_fraction:.2f}): too few documents for this fold")
        return train, dev

    def fold_splits(self, plan: list["Fold"], dev_fraction: float, seed: int) -> list[tuple[list[str], list[str]]]:
        """Each fold's other documents as (train, dev); all computed before the first fold trains, so that
        a fold too small to split fails at once."""
        return [self.split_dev(sorted(set(self.documents) - set(fold.test)), dev_fraction, seed) for fold in plan]


@dataclass
class Fold:
    """One fold of a plan: its name and its test documents (every other document trains)."""

    name: str
    test: list[str]


def kfold_plan(pool: Pool, folds: int, seed: int, documents: list[str] | None = None) -> list[Fold]:
    """``folds`` document-grouped folds of ``documents`` (default: all), balanced on each label's positives."""
    documents = pool.documents if documents is None else documents
    if folds > len(documents):
        raise EvaluationError(f"{folds} folds need at least {folds} documents; there are {len(documents)}")
    assignment = assign_folds(pool.examples(documents), folds, seed)
    plan = [Fold(f"fold-{k + 1}", sorted(d for d in documents if assignment[d] == k)) for k in range(folds)]
    empty = [fold.name for fold in plan if not fold.test]
    if empty:
        raise EvaluationError(f"{', '.join(empty)} got no documents; use fewer folds")
    return plan


def source_plan(pool: Pool, sources: dict[str, str | list[str]],
                where: str | None = None) -> tuple[list[Fold], list[str]]:
    """Leave-one-source-out: one fold per source (its documents are the test set), and the documents
    of no source, which are only ever trained on."""
    if len(sources) < 2:
        raise RecipeError("leave-one-source-out needs at least two sources in [evaluation] sources, e.g. "
                          '{ UA = "EN_UA_*", CC = "EN_CC_*" } (document-id patterns)', where=where)
    patterns = {name: [value] if isinstance(value, str) else list(value) for name, value in sources.items()}
    members: dict[str, list[str]] = {name: [] for name in patterns}
    training_only = []
    for doc in pool.documents:
        matched = [name for name, globs in patterns.items() if any(fnmatch.fnmatchcase(doc, g) for g in globs)]
        if len(matched) > 1:
            raise RecipeError(f"document {doc!r} matches the patterns of several sources ({', '.join(matched)}); "
                              "each document must belong to at most one source", where=where)
        (members[matched[0]] if matched else training_only).append(doc)
    empty = [name for name, docs in members.items() if not docs]
    if empty:
        raise EvaluationError(f"source(s) {', '.join(empty)} match no document of the data "
                              f"(patterns: {', '.join(str(patterns[n]) for n in empty)})")
    return [Fold(name, docs) for name, docs in members.items()], training_only


def default_dev_fraction(recipe: Recipe, info: dict) -> float:
    """The recipe's own dev share of the non-test documents, unless ``[evaluation] dev_fraction`` says."""
    if recipe.evaluation.dev_fraction is not None:
        return recipe.evaluation.dev_fraction
    ratios = info["build_config"]["split_ratios"]
    train, dev = ratios.get("train", 0), ratios.get("dev", 0)
    return dev / (train + dev) if train > 0 and dev > 0 else 0.15


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

    def __post_init__(self):
        # Absolute: a recipe resolves a relative run_dir against its own folder, not the working directory.
        self.work_dir = Path(self.work_dir).resolve()

    def signature(self, train: list[str], dev: list[str], test: list[str]) -> str:
        """What a saved fold must share with the fold to run: recipe (but paths and the evaluation and
        calibration settings, which only decide the split), data, and which documents go where."""
        recipe = _run_signature(self.recipe, self.pool.fingerprint)
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

    def run(self, name: str, train: list[str], dev: list[str], test: list[str]) -> dict:
        """The fold's record: test logits and labels, the fold's temperatures, thresholds and test report
        (distilling, also each teacher's test report)."""
        key = self.signature(train, dev, test)
        path = self.work_dir / FOLDS_FOLDER / f"{name}.json"
        saved = self._saved(path, key, name)
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
        logits = model.predict_logits(list(tested["text"]))
        y_true = np.array(tested["labels"], dtype=int).reshape(len(logits), -1)
        temperatures = [model.manifest.temperatures[l] for l in model.labels]
        record = {
            "name": name, "signature": key,
            "documents": {"train": sorted(train), "dev": sorted(dev), "test": sorted(test)},
            "sentences": {"train": len(data["train"]), "dev": len(data["dev"]), "test": len(tested)},
            "temperatures": temperatures, "thresholds": [float(t) for t in model.threshold_vector],
            "test_report": _evaluate_logits(logits, y_true, model.labels, temperatures, model.threshold_vector),
            "epochs_run": float(trainer.state.epoch or 0), "wall_seconds": round(time.time() - started, 1),
            "logits": logits.tolist(), "labels": y_true.tolist(),
        }
        if teachers:
            record["teachers"] = [{"recipe": runner.recipe.name, "signature": done["signature"],
                                   "test_report": done["test_report"], "wall_seconds": done["wall_seconds"]}
                                  for runner, done in zip(self.teachers, teachers)]
        if trainer.is_world_process_zero():
            if self.keep_models:  # before the record, so a finished fold has its model
                self._save_model(model, name, recipe.training.storage_dtype)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".json.partial")
            partial.write_text(json.dumps(record) + "\n", encoding="utf-8")
            partial.replace(path)
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
        return self._saved(self.work_dir / FOLDS_FOLDER / f"{name}.json", self.signature(train, dev, test), name)

    def _distillation(self, recipe: Recipe, name: str, dataset, model):
        """The student's recipe for this fold (its teachers are the fold's) and its distillation phase.
        ``dataset`` holds the fold's train, dev and test sentences, all left out of the unlabelled ones."""
        distill = recipe.distill.model_copy(update={
            "teacher": [str(teacher.model_dir(name)) for teacher in self.teachers],
            "scores_dir": str(self.work_dir / TEACHER_SCORES_FOLDER)})
        recipe = recipe.model_copy(update={"distill": distill})
        return recipe, distillation_phase(recipe, self.schema, dataset, self.splitter, model, self.progress)

    def _save_model(self, model, name: str, storage_dtype: str) -> None:
        """Written beside, then renamed into place: a model folder that exists is complete."""
        final = self.model_dir(name)
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial, storage_dtype=storage_dtype, model_card=False)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)

    def _drop_teacher_models(self, name: str) -> None:
        """A fold's teachers are large and teach no other fold: deleted once its student is trained
        (their records stay, with their test figures)."""
        for teacher in self.teachers:
            shutil.rmtree(teacher.model_dir(name), ignore_errors=True)

    def _saved(self, path: Path, key: str, name: str) -> dict | None:
        if not self.resume or not path.exists():
            return None
        if self.keep_models and not self.model_dir(name).is_dir():
            return None  # a teacher whose student was trained (and which was deleted) is trained again
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s is not a readable fold record; it is not used", path)
            return None
        if record.get("signature") != key:
            log.warning("%s holds a fold of another recipe, data or split; it is not used", path)
            return None
        return record


def pooled_report(records: list[dict], labels: list[str]) -> dict:
    """The out-of-fold predictions of every fold together, each scored with its own fold's
    temperatures and thresholds: one report over all test sentences."""
    probs, decided, truth = [], [], []
    for record in records:
        fold_probs = probabilities(np.asarray(record["logits"]).reshape(-1, len(labels)), record["temperatures"])
        probs.append(fold_probs)
        decided.append(decide(fold_probs, record["thresholds"]))
        truth.append(np.asarray(record["labels"], dtype=int).reshape(-1, len(labels)))
    probs, decided, truth = np.concatenate(probs), np.concatenate(decided), np.concatenate(truth)
    report = multilabel_report(truth, decided, labels, probs)
    report["ece"] = expected_calibration_error(truth, probs)
    return report


def _mean_sd(values) -> dict:
    """Mean and sample standard deviation over folds, leaving out folds where the figure is undefined
    (PR-AUC of a label with no positive in the fold)."""
    present = [float(v) for v in values if v is not None]
    return {"mean": float(np.mean(present)) if present else None,
            "sd": float(np.std(present, ddof=1)) if len(present) > 1 else None, "folds": len(present)}


def summarise(records: list[dict], labels: list[str]) -> dict:
    """Mean and sd over folds of each label's and the macro average's F1, precision, recall and PR-AUC."""
    reports = [record["test_report"] for record in records]
    return {
        "labels": {label: {m: _mean_sd(r["labels"][label].get(m) for r in reports) for m in METRICS}
                   for label in labels},
        "macro": {m: _mean_sd(r["macro"].get(m) for r in reports) for m in METRICS},
        "micro": {"f1": _mean_sd(r["micro"]["f1"] for r in reports)},
    }


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
           echo=None, teacher_overrides: list[str] | None = None) -> "Setup":
        """``make_model`` and ``tokenizer`` replace the recipe's base (a student's; teachers are always
        built from their own recipes, with ``teacher_overrides``)."""
        schema = load_schema(recipe.schema_path)
        dataset, info, read_report = prepare_dataset(recipe, schema)
        if read_report.skipped:
            log.warning("%s", read_report.summary())
        pool = Pool(dataset, info["fingerprint"])
        echo = echo or echo_for(progress)
        teachers = teacher_runners(recipe, schema, pool, Path(work_dir), resume=resume, progress=progress,
                                   echo=echo, overrides=teacher_overrides) if recipe.distill is not None else []
        runner = FoldRunner(recipe, schema, pool, Path(work_dir),
                            make_model or (lambda: seeded_base_model(recipe, schema)),
                            tokenizer, resume, progress, echo, teachers=teachers, splitter=data_splitter(info))
        return cls(recipe, schema, pool, info, runner)


def teacher_runners(recipe: Recipe, schema: LabelSchema, pool: Pool, work_dir: Path, *, resume: bool,
                    progress: bool, echo: Callable[[str], None], overrides: list[str] | None = None
                    ) -> list[FoldRunner]:
    """A [distill] recipe's teachers as fold runners of their recipes (with ``overrides``, like
    ``--set``), on the same pooled data: each fold trains them on its own documents. Checked before
    any fold trains."""
    paths = recipe.distill.teacher_recipes
    if not paths:
        raise RecipeError("cross-validating a [distill] recipe needs distill.teacher_recipe, the recipe of each "
                          "teacher: every fold trains its teachers again on the fold's own training documents "
                          "(the teachers in distill.teacher have seen every fold's test documents)",
                          where=recipe.source)
    runners = []
    for number, path in enumerate(paths, 1):
        where = f"{recipe.source}: distill.teacher_recipe {path!r}"
        try:
            teacher = load_recipe(recipe.resolve(path), overrides)
        except RecipeError as error:
            raise RecipeError(f"the teacher's recipe cannot be used: "
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
        runners.append(FoldRunner(teacher, schema, pool, work_dir / TEACHERS_FOLDER / f"{number}-{teacher.name}",
                                  lambda teacher=teacher: seeded_base_model(teacher, schema), None, resume, progress,
                                  echo, keep_models=True))
    return runners


def cross_validate(recipe: Recipe, out_dir: str | Path, *, folds: int | None = None, by_source: bool = False,
                   only: list[str] | None = None, make_model: Callable | None = None, tokenizer=None,
                   resume: bool = True, progress: bool = True, echo: Callable[[str], None] | None = None,
                   teacher_overrides: list[str] | None = None) -> dict:
    """Cross-validate what ``recipe`` trains and write ``report.json`` and ``report.md`` to ``out_dir``.

    k-fold (``folds``, default ``[evaluation] folds``) or, with ``by_source``, leave-one-source-out
    over ``[evaluation] sources``. ``only`` (fold names) trains just those folds now: the report then
    covers the folds finished so far and says it is partial, and later runs add the others (one long
    cross-validation spread over sessions or machines). ``make_model`` gives a fresh untrained model
    per fold (default: the recipe's base); ``tokenizer`` replaces the base's; ``teacher_overrides``
    (``section.key=value``) apply to a [distill] recipe's teacher recipes. Returns the report.
    """
    out_dir = Path(out_dir)
    setup = Setup.of(recipe, out_dir, make_model=make_model, tokenizer=tokenizer, resume=resume, progress=progress,
                     echo=echo, teacher_overrides=teacher_overrides)
    pool, runner = setup.pool, setup.runner
    training_only: list[str] = []
    if by_source:
        plan, training_only = source_plan(pool, recipe.evaluation.sources, where=recipe.source)
    else:
        plan = kfold_plan(pool, folds or recipe.evaluation.folds, recipe.seed)
    if only is not None and not only:
        raise EvaluationError("'only' names no fold; leave it out to run every fold")
    unknown = sorted(set(only or []) - {fold.name for fold in plan})
    if unknown:
        raise EvaluationError(f"no fold is named {', '.join(unknown)}; the folds are "
                              f"{', '.join(fold.name for fold in plan)}")
    dev_fraction = default_dev_fraction(recipe, setup.info)
    splits = pool.fold_splits(plan, dev_fraction, recipe.seed)
    records = []
    for number, (fold, (train, dev)) in enumerate(zip(plan, splits), 1):
        if only and fold.name not in only:
            record = runner.finished(fold.name, train, dev, fold.test) if resume else None
            if record is not None:
                records.append(record)
            continue
        runner.echo(f"fold {number}/{len(plan)} ({fold.name}): {len(train)} training documents, "
                    f"{len(dev)} dev, {len(fold.test)} test")
        record = runner.run(fold.name, train, dev, fold.test)
        runner.echo(f"fold {number}/{len(plan)} ({fold.name}): test macro F1 "
                    f"{format_metric(record['test_report']['macro']['f1'])}")
        records.append(record)
    labels = setup.schema.label_names
    report = {
        "recipe": recipe.name, "scheme": "leave-one-source-out" if by_source else "k-fold", "folds": len(plan),
        "folds_finished": [record["name"] for record in records],
        "seed": recipe.seed, "dev_fraction": dev_fraction, "data_fingerprint": pool.fingerprint,
        "documents": len(pool.documents), "sentences": len(pool.rows), "labels": labels,
        "sources": dict(recipe.evaluation.sources) if by_source else None, "training_only_documents": training_only,
        "mean_sd": summarise(records, labels), "pooled": pooled_report(records, labels),
        "per_fold": [_fold_summary(record) for record in records],
        "teachers": [{"recipe": teacher.recipe.name,
                      "mean_sd": summarise([record["teachers"][i] for record in records], labels),
                      "per_fold_macro_f1": [record["teachers"][i]["test_report"]["macro"]["f1"] for record in records]}
                     for i, teacher in enumerate(runner.teachers)],
    }
    write_report(report, out_dir)
    return report


def _fold_summary(record: dict) -> dict:
    return {key: record[key] for key in ("name", "sentences", "epochs_run", "wall_seconds", "temperatures",
                                         "thresholds", "test_report")} | {
        "documents": {split: len(docs) for split, docs in record["documents"].items()},
        "test_documents": record["documents"]["test"]}


def format_mean_sd(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.3f}" + ("" if stats["sd"] is None else f" ± {stats['sd']:.3f}")


def mean_sd_table(summary: dict, labels: list[str]) -> list[str]:
    """Markdown rows: one per label and the macro average, each figure as mean ± sd over folds."""
    lines = ["| label | F1 | precision | recall | PR-AUC |", "|---|---:|---:|---:|---:|"]
    rows = [(label, summary["labels"][label]) for label in labels] + [("*macro*", summary["macro"])]
    lines += [f"| {name} | " + " | ".join(format_mean_sd(row[m]) for m in METRICS) + " |" for name, row in rows]
    lines.append(f"| *micro* | {format_mean_sd(summary['micro']['f1'])} | | | |")
    return lines


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """``report.json`` and ``report.md`` of :func:`cross_validate`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = report["labels"]
    scheme = ("leave-one-source-out" if report["scheme"] == "leave-one-source-out"
              else f"{report['folds']}-fold, grouped by document")
    finished = report.get("folds_finished") or [fold["name"] for fold in report["per_fold"]]
    partial = len(finished) < report["folds"]
    lines = [f"# Cross-validation of recipe `{report['recipe']}`: {scheme}", ""]
    if partial:
        lines += [f"**Partial: {len(finished)} of {report['folds']} folds finished ({', '.join(finished)}).** "
                  "The figures below cover those folds only; rerun the same command (without `--only`, or with "
                  "the other folds) to add the rest.", ""]
    lines += [f"Data: {report['documents']} documents, {report['sentences']} sentences "
              f"(`{report['data_fingerprint']}`); seed {report['seed']}. Each fold's documents are its test set; "
              f"the other documents are split into train and dev (dev fraction {report['dev_fraction']:.2f}, "
              "grouped by document, balanced on each label's positives); dev serves early stopping and the fold's "
              "temperatures and thresholds."]
    if report["scheme"] == "leave-one-source-out":
        sources = ", ".join(f"{name} = {patterns}" for name, patterns in report["sources"].items())
        only = report["training_only_documents"]
        lines += ["", f"Sources (document-id patterns): {sources}. {len(only)} document(s) belong to no source "
                  "and are never tested, only trained on (in every fold's train or dev)"
                  + (f": {', '.join(only)}." if only else ".")]
    counted = len(finished) if partial else report["folds"]
    lines += ["", f"## Mean ± sd over {counted} fold{'' if counted == 1 else 's'} (sample sd)", "",
              *mean_sd_table(report["mean_sd"], labels), "",
              "## Pooled out-of-fold predictions", "",
              "Every fold's test sentences together, each scored by its own fold's model and thresholds "
              f"(ECE {report['pooled']['ece']:.4f}).", "", format_report(report["pooled"]), "",
              "## Per fold", "",
              "| fold | train docs | dev docs | test docs | test sentences | macro F1 | "
              + " | ".join(f"{label} F1" for label in labels) + " |",
              "|---|---:|---:|---:|---:|---:|" + "---:|" * len(labels)]
    for fold in report["per_fold"]:
        docs, test = fold["documents"], fold["test_report"]
        lines.append(f"| {fold['name']} | {docs['train']} | {docs['dev']} | {docs['test']} | "
                     f"{fold['sentences']['test']} | {format_metric(test['macro']['f1'])} | "
                     + " | ".join(format_metric(test["labels"][label]["f1"]) for label in labels) + " |")
    for teacher in report.get("teachers", []):
        lines += ["", f"## Teacher `{teacher['recipe']}`, trained in each fold on the student's training documents",
                  "", "Its own test figures on the same folds (mean ± sd), for comparison with the student's.", "",
                  *mean_sd_table(teacher["mean_sd"], labels), "",
                  "Per-fold macro F1: " + ", ".join(format_metric(f1) for f1 in teacher["per_fold_macro_f1"]) + "."]
    paths = [out_dir / "report.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


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
    work_dir, echo = recipe.run_path / "oof-calibration", echo_for(progress)
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
              "out_of_fold": _evaluate_logits(logits, y_true, labels, temperatures, thresholds),
              "cross_validated": summarise(records, labels)}
    return OutOfFoldCalibration((temperatures, thresholds), record)
