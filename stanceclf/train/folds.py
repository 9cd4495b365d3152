"""Fold plans: which documents each fold tests on, and how the others split into train and dev.

Folds are grouped by document and balanced on each label's positives
(:func:`stanceclf.data.dataset.assign_folds`), or one per source with sources defined by
document-id patterns (leave-one-source-out). A fold's other documents are split into train and dev
by :func:`stanceclf.data.dataset.assign_splits`, grouped by document and balanced as well.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stanceclf.data.dataset import assign_folds, assign_splits
from stanceclf.errors import EvaluationError, RecipeError
from stanceclf.train.recipe import Recipe

if TYPE_CHECKING:
    import datasets


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

    def subset(self, doc_ids) -> datasets.Dataset:
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


def kfold_plan(pool: Pool, folds: int, seed: int, documents: list[str] | None = None,
               kept: dict[str, int] | None = None) -> list[Fold]:
    """``folds`` document-grouped folds of ``documents`` (default: all), balanced on each label's positives;
    ``kept`` documents (id -> fold index, from :func:`kept_folds`) stay in their fold."""
    documents = pool.documents if documents is None else documents
    if folds > len(documents):
        raise EvaluationError(f"{folds} folds need at least {folds} documents; there are {len(documents)}")
    assignment = assign_folds(pool.examples(documents), folds, seed, fixed=kept)
    plan = [Fold(f"fold-{k + 1}", sorted(d for d in documents if assignment[d] == k)) for k in range(folds)]
    empty = [fold.name for fold in plan if not fold.test]
    if empty:
        raise EvaluationError(f"{', '.join(empty)} got no documents; use fewer folds")
    return plan


def kept_folds(folder, folds: int) -> dict[str, int]:
    """Each test document of an earlier k-fold cross-validation (its output folder, with ``folds/fold-K.json``)
    -> its fold index (0 for ``fold-1``), for ``[evaluation] keep_folds_of``. The earlier run must have
    had ``folds`` folds, all finished."""
    folder = Path(folder)
    found = sorted(folder.glob("folds/fold-*.json"))
    expected = [folder / "folds" / f"fold-{k + 1}.json" for k in range(folds)]
    if sorted(found) != sorted(expected):
        raise EvaluationError(f"{folder}: [evaluation] keep_folds_of needs an earlier {folds}-fold cross-validation "
                              f"with every fold finished; found {len(found)} fold record(s) "
                              f"({', '.join(path.name for path in found) or 'none'})")
    kept: dict[str, int] = {}
    for k, path in enumerate(expected):
        try:
            test = json.loads(path.read_text(encoding="utf-8"))["documents"]["test"]
            if not isinstance(test, list) or not all(isinstance(doc, str) for doc in test):
                raise TypeError("documents.test is not a list of document ids")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise EvaluationError(f"{path}: not a fold record with documents.test ({error})") from None
        for doc in test:
            if doc in kept:
                raise EvaluationError(f"{path}: document {doc!r} is also a test document of fold-{kept[doc] + 1}")
            kept[doc] = k
    return kept


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
