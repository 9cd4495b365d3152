"""Cross-validation of what a recipe trains: generalisation measured over many splits, not one.

:func:`cross_validate` runs document-grouped k-fold or leave-one-source-out folds
(:mod:`stanceclf.train.folds`): each fold's documents are its test set, the other documents are split
into train and dev (early stopping, temperatures and thresholds). The folds are trained, saved and
reused by :class:`~stanceclf.train.fold_runner.FoldRunner` (a ``[distill]`` recipe's teachers are
trained again in every fold); the report (:mod:`stanceclf.train.fold_reports`) gives mean and standard
deviation over folds, and the pooled out-of-fold figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from stanceclf.errors import EvaluationError
from stanceclf.model.metrics import format_metric
from stanceclf.train.fold_reports import fold_summary, pooled_report, summarise, write_report
from stanceclf.train.fold_runner import Setup
from stanceclf.train.folds import default_dev_fraction, kept_folds, kfold_plan, source_plan
from stanceclf.train.recipe import Recipe


def cross_validate(recipe: Recipe, out_dir: str | Path, *, folds: int | None = None, by_source: bool = False,
                   only: list[str] | None = None, make_model: Callable | None = None, tokenizer=None,
                   resume: bool = True, progress: bool = True, echo: Callable[[str], None] | None = None,
                   teacher_overrides: list[str] | None = None, keep_models: bool = False) -> dict:
    """Cross-validate what ``recipe`` trains and write ``report.json`` and ``report.md`` to ``out_dir``.

    k-fold (``folds``, default ``[evaluation] folds``) or, with ``by_source``, leave-one-source-out
    over ``[evaluation] sources``. ``only`` (fold names) trains just those folds now: the report then
    covers the folds finished so far and says it is partial, and later runs add the others (one long
    cross-validation spread over sessions or machines). ``make_model`` gives a fresh untrained model
    per fold (default: the recipe's base); ``tokenizer`` replaces the base's; ``teacher_overrides``
    (``section.key=value``) apply to a [distill] recipe's teacher recipes. ``keep_models`` keeps each
    fold's model in ``out_dir/models`` (a teacher's folds, for its students' cross-validations to reuse:
    ``distill.teacher_folds_of``). Returns the report.
    """
    out_dir = Path(out_dir)
    setup = Setup.of(recipe, out_dir, make_model=make_model, tokenizer=tokenizer, resume=resume, progress=progress,
                     echo=echo, teacher_overrides=teacher_overrides, keep_models=keep_models,
                     borrow_teachers=True)
    pool, runner = setup.pool, setup.runner
    training_only: list[str] = []
    if by_source:
        plan, training_only = source_plan(pool, recipe.evaluation.sources, where=recipe.source)
    else:
        count = folds or recipe.evaluation.folds
        keep = recipe.evaluation.keep_folds_of
        plan = kfold_plan(pool, count, recipe.seed, kept=kept_folds(recipe.resolve(keep), count) if keep else None)
    if only is not None and not only:
        raise EvaluationError("'only' names no fold; leave it out to run every fold")
    unknown = sorted(set(only or []) - {fold.name for fold in plan})
    if unknown:
        raise EvaluationError(f"no fold is named {', '.join(unknown)}; the folds are "
                              f"{', '.join(fold.name for fold in plan)}")
    dev_fraction = default_dev_fraction(recipe, setup.info)
    splits = pool.fold_splits(plan, dev_fraction, recipe.seed)
    done: dict[str, dict] = {}
    for number, (fold, (train, dev)) in enumerate(zip(plan, splits), 1):
        if only and fold.name not in only:
            continue
        runner.echo(f"fold {number}/{len(plan)} ({fold.name}): {len(train)} training documents, "
                    f"{len(dev)} dev, {len(fold.test)} test")
        done[fold.name] = runner.run(fold.name, train, dev, fold.test)
        runner.echo(f"fold {number}/{len(plan)} ({fold.name}): test macro F1 "
                    f"{format_metric(done[fold.name]['test_report']['macro']['f1'])}")
    # The other folds are read once this run's are trained: another process running other folds (--only)
    # into the same folder meanwhile has its finished ones in this report too.
    for fold, (train, dev) in zip(plan, splits):
        if fold.name not in done and resume:
            record = runner.finished(fold.name, train, dev, fold.test)
            if record is not None:
                done[fold.name] = record
    records = [done[fold.name] for fold in plan if fold.name in done]
    labels = setup.schema.label_names
    report = {
        "recipe": recipe.name, "scheme": "leave-one-source-out" if by_source else "k-fold", "folds": len(plan),
        "folds_finished": [record["name"] for record in records],
        "seed": recipe.seed, "dev_fraction": dev_fraction, "data_fingerprint": pool.fingerprint,
        "documents": len(pool.documents), "sentences": len(pool.rows), "labels": labels,
        "sources": dict(recipe.evaluation.sources) if by_source else None, "training_only_documents": training_only,
        "mean_sd": summarise(records, labels), "pooled": pooled_report(records, labels),
        "per_fold": [fold_summary(record) for record in records],
        "teachers": [{"recipe": teacher.recipe.name,
                      "mean_sd": summarise([record["teachers"][i] for record in records], labels),
                      "per_fold_macro_f1": [record["teachers"][i]["test_report"]["macro"]["f1"] for record in records]}
                     for i, teacher in enumerate(runner.teachers)],
    }
    write_report(report, out_dir)
    return report
