"""From annotated documents to a sentence-level, multi-label dataset.

Each document is split into sentences; a sentence carries a label when a span
of that label overlaps it by at least ``min_overlap_chars`` characters (and,
if set, ``min_overlap_fraction`` of the sentence). Documents are kept whole
within one split, assigned greedily so that every split gets its share of
sentences and of each label's positives, deterministically for a seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from stanceclf.data.context import ContextSettings, sentence_contexts
from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.errors import AnnotationError, BuildOptionError
from stanceclf.data.schema import LabelSchema
from stanceclf.data.sentences import SentenceSplitter

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "dev", "test")
BUILD_INFO = "build.json"
#: The files :func:`save_dataset` can write beside the Arrow dataset.
EXPORTS = ("jsonl", "parquet")


class BuildConfig(BaseModel):
    """How spans become sentence labels and how documents are split.

    The one declaration of the build defaults: ``build-dataset`` and a recipe's ``[data]``
    section (which extends this class) both take them from here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    splitter: SentenceSplitter = SentenceSplitter()
    min_overlap_chars: int = Field(default=1, ge=1)
    min_overlap_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    split_ratios: dict[str, float] = {"train": 0.7, "dev": 0.15, "test": 0.15}
    seed: int = 13
    #: What each sentence is read with (:mod:`stanceclf.data.context`): a ``context`` column when on.
    context: ContextSettings = ContextSettings()

    @field_validator("split_ratios")
    @classmethod
    def _check_ratios(cls, ratios: dict[str, float]) -> dict[str, float]:
        unknown = set(ratios) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; use {list(SPLITS)}")
        if not all(r >= 0 for r in ratios.values()) or not abs(sum(ratios.values()) - 1) <= 1e-6:  # NaN fails
            raise ValueError(f"split ratios must be non-negative and sum to 1, got {ratios}")
        return ratios

    def marks(self, span: Span, start: int, end: int) -> bool:
        """Whether ``span`` gives its label to the sentence ``[start, end)``: the one overlap rule."""
        overlap = span.overlap(start, end)
        return overlap >= self.min_overlap_chars and overlap >= self.min_overlap_fraction * (end - start)

    @model_serializer(mode="wrap")
    def _context_only_when_read(self, handler) -> dict:
        # Without context the settings dump (and so fingerprints, build info and run signatures) exactly as
        # before contexts existed: data and runs of then are recognised as the same.
        dumped = handler(self)
        if not self.context.enabled:
            dumped.pop("context", None)
        return dumped

    def build_settings(self) -> "BuildConfig":
        """Only the build settings (a subclass may carry more)."""
        return BuildConfig(**{name: getattr(self, name) for name in BuildConfig.model_fields})


class AnnotationSource(BaseModel):
    """Which annotations to read and how: a format, its inputs (to split by ratio, or fixed
    ``train``/``dev``/``test`` lists), a label mapping, strictness and reader options
    (e.g. ``text_field`` for Label Studio and doccano, ``text_root`` for the native format)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = "native"
    inputs: list[str] = []
    train: list[str] = []
    dev: list[str] = []
    test: list[str] = []
    label_map: dict[str, str | None] = {}
    strict: bool = True
    reader_options: dict[str, str | int | bool | None] = {}

    @field_validator("format")
    @classmethod
    def _known_format(cls, fmt: str) -> str:
        from stanceclf.data.readers import FORMATS

        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; supported: {sorted(FORMATS)}")
        return fmt

    @model_validator(mode="after")
    def _known_reader_options(self) -> "AnnotationSource":
        from stanceclf.data.readers import check_reader_options

        try:
            check_reader_options(self.format, self.reader_options)
        except AnnotationError as error:
            raise ValueError(error.detail) from None
        return self


def from_annotations(source: AnnotationSource, schema: LabelSchema, config: BuildConfig, *,
                     resolve=Path, report=None) -> tuple[datasets.DatasetDict, dict]:
    """Read ``source`` and build the dataset: ``(DatasetDict, build info)``. The one path from
    annotations to a dataset, used by ``stanceclf build-dataset`` and by training.

    ``resolve`` turns each input string into a path (a recipe resolves them against its folder).
    """
    from stanceclf.data.readers import read_annotations

    def read(paths):
        return read_annotations(source.format, [resolve(p) for p in paths], labels=schema.label_names,
                                label_map=source.label_map, strict=source.strict, report=report,
                                **source.reader_options)

    config = config.build_settings()
    if source.inputs:
        return build_dataset(read(source.inputs), schema, config)
    fixed = {name: read(paths) for name, paths in (("train", source.train), ("dev", source.dev),
                                                   ("test", source.test)) if paths}
    return build_dataset([], schema, config, fixed_splits=fixed)

def sentence_examples(document: AnnotatedDocument, schema: LabelSchema, config: BuildConfig) -> list[dict]:
    """One example per sentence of ``document`` with multi-hot labels in schema order, and its ``context``
    when ``config.context`` reads one."""
    names = schema.label_names
    examples = []
    sentences = config.splitter.split(document.text)
    contexts = sentence_contexts([sentence.text for sentence in sentences], config.context)
    for index, (sentence, context) in enumerate(zip(sentences, contexts)):
        hot = [0] * len(names)
        for span in document.spans:
            if config.marks(span, sentence.start, sentence.end):
                hot[names.index(span.label)] = 1
        examples.append({
            "doc_id": document.doc_id,
            "sentence_index": index,
            "start": sentence.start,
            "end": sentence.end,
            "text": sentence.text,
            "labels": hot,
            **({"context": context} if context is not None else {}),
        })
    return examples


def assign_splits(examples_by_doc: dict[str, list[dict]], ratios: dict[str, float], seed: int) -> dict[str, str]:
    """Map each document id to a split, grouped by document and balanced on
    sentences and on each label's positives as far as whole documents allow."""
    return balanced_assignment(examples_by_doc, {name: ratios.get(name, 0) for name in SPLITS}, seed)


def assign_folds(examples_by_doc: dict[str, list[dict]], folds: int, seed: int,
                 fixed: dict[str, int] | None = None) -> dict[str, int]:
    """Map each document id to one of ``folds`` cross-validation folds (0 to folds - 1): the k-fold
    analogue of :func:`assign_splits`, equal shares, balanced on sentences and on each label's positives.
    ``fixed`` documents keep the fold given (an earlier cross-validation's), and the others fill around them."""
    return balanced_assignment(examples_by_doc, {fold: 1.0 / folds for fold in range(folds)}, seed, fixed=fixed)


def balanced_assignment(examples_by_doc: dict[str, list[dict]], shares: dict, seed: int,
                        fixed: dict | None = None) -> dict:
    """Map each document id to a group of ``shares`` (group -> share of the whole), greedily, so that
    every group gets its share of sentences and of each label's positives; deterministic for a seed.
    ``fixed`` (document id -> group) places those documents first, as given."""
    groups = [name for name, share in shares.items() if share > 0]
    fixed = {d: g for d, g in (fixed or {}).items() if d in examples_by_doc}
    doc_ids = sorted(examples_by_doc)
    random.Random(seed).shuffle(doc_ids)
    counts = {d: _doc_counts(examples_by_doc[d]) for d in doc_ids}
    n_dims = max((len(c) for c in counts.values()), default=0)
    # A document with no sentences (an empty text) has no label columns to count: pad with zeros.
    counts = {d: c + [0] * (n_dims - len(c)) for d, c in counts.items()}
    totals = [sum(c[k] for c in counts.values()) for k in range(n_dims)]
    # Documents rich in the rarest label are placed first, while every group still has room.
    rarity = [1.0 / t if t else 0.0 for t in totals]
    doc_ids.sort(key=lambda d: -sum(c * r for c, r in zip(counts[d][1:], rarity[1:])))
    current = {g: [0] * n_dims for g in groups}
    assignment = {}
    for doc_id, group in sorted(fixed.items()):
        if group not in current:
            raise ValueError(f"document {doc_id!r} is fixed to group {group!r}, which is not one of {groups}")
        assignment[doc_id] = group
        current[group] = [a + b for a, b in zip(current[group], counts[doc_id])]
    for doc_id in (d for d in doc_ids if d not in fixed):
        def need(group) -> float:
            # The share of this group's quota still unfilled, per dimension, weighted by what the
            # document brings: relative, so that small groups are not starved by the large one.
            return sum(counts[doc_id][k] * (shares[group] * totals[k] - current[group][k]) / (shares[group] * totals[k])
                       for k in range(n_dims) if totals[k])
        best = max(groups, key=lambda g: (need(g), shares[g]))
        assignment[doc_id] = best
        current[best] = [a + b for a, b in zip(current[best], counts[doc_id])]
    return assignment


def _doc_counts(examples: list[dict]) -> list[int]:
    positives = [sum(column) for column in zip(*(e["labels"] for e in examples))] if examples else []
    return [len(examples), *positives]


def build_dataset(documents: list[AnnotatedDocument], schema: LabelSchema, config: BuildConfig | None = None, *,
                  fixed_splits: dict[str, list[AnnotatedDocument]] | None = None) -> tuple[datasets.DatasetDict, dict]:
    """Build a :class:`datasets.DatasetDict` of sentence examples.

    With ``fixed_splits`` (e.g. PTC's own train and dev folders) the given
    documents form the splits as they are; otherwise ``documents`` are split
    by ``config.split_ratios``.
    """
    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    config = config or BuildConfig()
    _check_unique_ids(fixed_splits if fixed_splits is not None else {"input": documents})
    if fixed_splits is not None:
        per_split = {name: [ex for doc in docs for ex in sentence_examples(doc, schema, config)]
                     for name, docs in fixed_splits.items()}
        all_docs = [doc for docs in fixed_splits.values() for doc in docs]
    else:
        by_doc = {doc.doc_id: sentence_examples(doc, schema, config) for doc in documents}
        assignment = assign_splits(by_doc, config.split_ratios, config.seed)
        per_split = {name: [] for name in SPLITS if config.split_ratios.get(name, 0) > 0}
        for doc in sorted(documents, key=lambda d: d.doc_id):
            per_split[assignment[doc.doc_id]].extend(by_doc[doc.doc_id])
        all_docs = documents
    features = Features({
        "doc_id": Value("string"),
        "sentence_index": Value("int32"),
        "start": Value("int64"),
        "end": Value("int64"),
        "text": Value("string"),
        "labels": Sequence(Value("int8"), length=len(schema.label_names)),
        **({"context": Value("string")} if config.context.enabled else {}),
    })
    dataset = DatasetDict({
        name: Dataset.from_list(rows, features=features) if rows else Dataset.from_dict(
            {k: [] for k in features}, features=features)
        for name, rows in per_split.items()
    })
    info = {
        "schema": schema.to_dict(),
        "build_config": config.model_dump(mode="json"),
        "fingerprint": data_fingerprint(all_docs, schema, config, fixed_splits=fixed_splits),
        "documents": {name: sorted({row["doc_id"] for row in rows}) for name, rows in per_split.items()},
    }
    return dataset, info


def built_contexts(examples) -> list[str] | None:
    """The contexts a split of a built dataset was built with (its ``context`` column), the very strings
    training read; None for a dataset built without context."""
    return list(examples["context"]) if "context" in examples.column_names else None


def _check_unique_ids(groups: dict[str, list[AnnotatedDocument]]) -> None:
    """Two documents with one id would merge their sentences, or put one document in two splits."""
    seen: dict[str, str] = {}
    for group, documents in groups.items():
        for doc in documents:
            if doc.doc_id in seen:
                where = f"both in {group}" if seen[doc.doc_id] == group else f"in {seen[doc.doc_id]} and in {group}"
                raise AnnotationError(f"document id {doc.doc_id!r} occurs twice ({where}); ids must be unique "
                                      "across all inputs and splits")
            seen[doc.doc_id] = group


def data_fingerprint(documents: list[AnnotatedDocument], schema: LabelSchema, config: BuildConfig, *,
                     fixed_splits: dict[str, list[AnnotatedDocument]] | None = None) -> str:
    """A hash of the texts, spans, schema and build settings (and, for fixed splits, which split
    holds each document): the same data gives the same fingerprint."""
    digest = hashlib.sha256()
    digest.update(json.dumps([schema.to_dict(), config.model_dump(mode="json")], sort_keys=True).encode())
    if fixed_splits is not None:
        membership = {name: sorted(doc.doc_id for doc in docs) for name, docs in fixed_splits.items()}
        digest.update(json.dumps(membership, sort_keys=True).encode())
    for doc in sorted(documents, key=lambda d: d.doc_id):
        digest.update(doc.doc_id.encode() + b"\0" + doc.checksum.encode())
        for span in sorted(doc.spans):
            digest.update(f"{span.start}:{span.end}:{span.label}".encode())
    return "sha256:" + digest.hexdigest()


def statistics(dataset, schema: LabelSchema) -> list[dict]:
    """Rows of (split, documents, sentences, positives per label)."""
    rows = []
    for name in dataset:
        split = dataset[name]
        positives = Counter()
        for hot in split["labels"]:
            for label, value in zip(schema.label_names, hot):
                positives[label] += int(value)
        rows.append({"split": name, "documents": len(set(split["doc_id"])), "sentences": len(split),
                     **{label: positives[label] for label in schema.label_names}})
    return rows


def format_statistics(rows: list[dict]) -> str:
    """A Markdown table of :func:`statistics` rows."""
    if not rows:
        return "(empty dataset)"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[h]) for h in header) + " |" for row in rows]
    return "\n".join(lines)


def save_dataset(dataset, info: dict, schema: LabelSchema, out_dir: str | Path, *,
                 export: tuple[str, ...] = ("jsonl",)) -> Path:
    """Save the DatasetDict (Arrow), its build info, statistics, and JSONL/Parquet exports."""
    from stanceclf.progress import library_output, wants_progress

    check_exports(export)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # datasets draws bars for every split and export, even of a few hundred rows: only for long work.
    with library_output("datasets", progress=wants_progress(sum(len(split) for split in dataset.values()))):
        # One shard per split: datasets writes an empty split with zero shards, which it cannot load back.
        dataset.save_to_disk(str(out_dir / "dataset"), num_shards={name: 1 for name in dataset})
        rows = statistics(dataset, schema)
        (out_dir / BUILD_INFO).write_text(json.dumps({**info, "statistics": rows}, indent=2), encoding="utf-8")
        (out_dir / "statistics.md").write_text(format_statistics(rows) + "\n", encoding="utf-8")
        for fmt in export:
            for name in dataset:
                if fmt == "jsonl":
                    dataset[name].to_json(str(out_dir / f"{name}.jsonl"), lines=True, force_ascii=False)
                else:
                    dataset[name].to_parquet(str(out_dir / f"{name}.parquet"))
    return out_dir


def check_exports(export, *, where: str | None = None) -> None:
    """Refuse an export format :func:`save_dataset` cannot write, before anything is written."""
    unknown = [fmt for fmt in export if fmt not in EXPORTS]
    if unknown:
        raise BuildOptionError(f"unknown export format {unknown[0]!r}; use {' or '.join(EXPORTS)}, several "
                               "comma-separated, or none", where=where)


def load_built_dataset(path: str | Path) -> tuple[datasets.DatasetDict, dict]:
    """Load a dataset written by :func:`save_dataset`: ``(DatasetDict, build info)``."""
    from datasets import load_from_disk

    path = Path(path)
    info_path = path / BUILD_INFO
    if not info_path.exists():
        from stanceclf.errors import StanceclfError

        raise StanceclfError(f"not a built dataset folder: {info_path} is missing "
                             "(make one with 'stanceclf build-dataset')", where=str(path))
    return load_from_disk(str(path / "dataset")), json.loads(info_path.read_text(encoding="utf-8"))
