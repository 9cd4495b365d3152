"""Distillation: a student learns from gold labels and from its teachers' calibrated probabilities.

A recipe with a ``[distill]`` section (:class:`~stanceclf.train.recipe.DistillSection`) trains its
model as a student. This phase runs between data preparation and fine-tuning (see
:func:`stanceclf.train.trainer.train`):

1. **Teachers**: stanceclf model directories whose labels are the student schema's. Several
   teachers are an ensemble: their calibrated probabilities are averaged.
2. **Unlabelled sentences**: the inputs are read as ``stanceclf score`` reads a corpus
   (:class:`~stanceclf.infer.scoring.job.CorpusReader`: its formats, bad-record rule and coded errors)
   and split with the student's splitter. Repeated sentences count once, and a sentence that is
   also in a labelled split is left out (the student's dev and test sentences stay unseen).
   With ``augment_labelled``, noisy copies of the labelled *training* sentences join them
   (:mod:`stanceclf.train.augment`).
3. **Teacher scores** are computed once per teacher and cached in the run folder, or in the
   recipe's ``scores_dir`` that several students of one teacher can share
   (``<teacher>-<signature>/``, Parquet parts keyed by sentence text; the signature covers the
   teacher's weights, manifest and backend). A rerun, a resumed run or a student with other
   settings reads them back; an interrupted scoring goes on from its last saved part (a part
   holds a chunk of ``stanceclf score``'s size). The cache is keyed by sentence, not by input
   record as a scoring run's progress is, because students share it whatever corpus they read.
4. **The training set** holds the labelled train sentences (gold labels) and the soft rows
   (teacher probabilities as targets in [0, 1]). Each row carries a weight chosen so that the
   expected batch loss is ``alpha * gold BCE + (1 - alpha) * soft BCE``, whatever the mix of rows.
5. **The student** is the base model, or with ``student_layers`` a shallower copy of it that
   keeps some of its layers.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stanceclf.errors import RecipeError
from stanceclf.files import exclusive_lock, replaced_atomically
from stanceclf.infer.scoring.job import SCORE_DEFAULTS
from stanceclf.model.architectures import architecture_of
from stanceclf.progress import progress_bar
from stanceclf.train.augment import MIN_WORDS, noisy_copies

if TYPE_CHECKING:
    import transformers

log = logging.getLogger(__name__)

TEACHER_SCORES = "teacher-scores"
#: Sentences scored between two saved parts: what an interruption can lose (a scoring run's chunk).
CHUNK_SENTENCES = SCORE_DEFAULTS.chunk_sentences


@dataclass
class Distillation:
    """What the trainer needs from this phase."""

    #: The mixed training split: ``text``, ``labels`` (float targets in [0, 1]) and ``weight`` per row.
    train_rows: object
    #: Identifies the teachers and the sentences they scored: a checkpoint of another distillation is
    #: not resumed.
    signature: str
    #: Provenance for the manifest (``training.distillation``).
    record: dict


def prepare_distillation(recipe, schema, dataset, splitter, *, progress: bool = True) -> Distillation:
    """Load the teachers, collect the unlabelled sentences, get the teachers' (cached) scores, and
    build the weighted training rows."""
    from datasets import Dataset

    settings = recipe.distill
    labels = schema.label_names
    teachers = [_load_teacher(recipe, path, labels) for path in settings.teachers]
    labelled = {text for split in dataset.values() for text in split["text"]}
    unlabelled, read = unlabelled_sentences(recipe, splitter, exclude=labelled, progress=progress)
    train_texts = list(dataset["train"]["text"])
    held_out = {text for name, split in dataset.items() if name != "train" for text in split["text"]}
    augmented = noisy_copies(train_texts, settings.augment_labelled, seed=recipe.seed,
                             exclude=labelled | set(unlabelled), held_out=held_out)
    soft_texts = unlabelled + augmented + (train_texts if settings.soft_on_labelled else [])
    if not soft_texts:
        raise RecipeError("distill: the teachers have no sentence to score: every unlabelled sentence is also "
                          "in the labelled data, and no training sentence is long enough for a noisy copy "
                          f"(more than {MIN_WORDS} words)" if settings.augment_labelled else
                          "distill: no unlabelled sentence is left (each one is also in the labelled data)",
                          where=recipe.source)
    folder = recipe.resolve(settings.scores_dir) if settings.scores_dir else recipe.run_path / TEACHER_SCORES
    caches = [TeacherScoreCache(folder, teacher) for teacher in teachers]
    soft = np.mean([cache.probabilities(soft_texts, labels, settings.teacher_batch_size, progress)
                    for cache in caches], axis=0)
    gold = np.asarray(dataset["train"]["labels"], dtype=np.float32).reshape(len(train_texts), len(labels))
    weights = mixing_weights(len(train_texts), len(soft_texts), settings.alpha)
    rows = Dataset.from_dict({
        "text": train_texts + soft_texts,
        "labels": np.vstack([gold, soft]).astype(np.float32).tolist(),
        "weight": [weights[0]] * len(train_texts) + [weights[1]] * len(soft_texts),
    })
    recipes = settings.teacher_recipes or [None] * len(caches)
    record = {
        # Paths as the recipe writes them (relative to its folder), not this machine's absolute ones.
        "teachers": [{"path": path, "recipe": teacher_recipe, "base_model": c.teacher.manifest.base_model,
                      "signature": c.signature} for path, teacher_recipe, c in zip(settings.teachers, recipes, caches)],
        "alpha": settings.alpha, "soft_on_labelled": settings.soft_on_labelled,
        "augment_labelled": settings.augment_labelled, "augmented_rows": len(augmented),
        "teacher_backend": caches[0].teacher.backend,
        "unlabelled": [str(p) for p in settings.unlabelled], **read,
        "gold_rows": len(train_texts), "soft_rows": len(soft_texts),
        "row_weights": {"gold": weights[0], "soft": weights[1]},
    }
    # The teachers and what they scored: other sentences (another corpus, other noisy copies) make
    # other training rows, and a checkpoint of those is not resumed.
    scored = hashlib.sha256("\n".join(soft_texts).encode()).hexdigest()
    signature = hashlib.sha256("+".join([c.signature for c in caches] + [scored]).encode()).hexdigest()
    return Distillation(rows, signature, record)


def mixing_weights(gold_rows: int, soft_rows: int, alpha: float) -> tuple[float, float]:
    """Per-row weights ``(gold, soft)`` such that a uniformly drawn batch's mean weighted loss has the
    expectation ``alpha * mean gold loss + (1 - alpha) * mean soft loss``."""
    total = gold_rows + soft_rows
    gold = alpha * total / gold_rows if gold_rows else 0.0
    soft = (1 - alpha) * total / soft_rows if soft_rows else 0.0
    return float(gold), float(soft)


def _load_teacher(recipe, path: str, labels: list[str]):
    from stanceclf.errors import StanceclfError
    from stanceclf.infer.model import StanceModel

    try:
        teacher = StanceModel.from_pretrained(recipe.resolve(path), fast=recipe.distill.teacher_backend)
    except StanceclfError as error:
        raise RecipeError(f"distill.teacher {path!r} cannot be loaded: {error}", where=recipe.source) from None
    if sorted(teacher.labels) != sorted(labels):
        raise RecipeError(f"distill.teacher {path!r} has the labels {teacher.labels}, the student's schema "
                          f"{labels}: a teacher must score the student's labels", where=recipe.source)
    if teacher.manifest.context.enabled:
        # Its cached scores are keyed by sentence alone: they would be scores of inputs it never reads.
        raise RecipeError(f"distill.teacher {path!r} reads each sentence with context ({teacher.manifest.context}), "
                          "and distillation scores sentences alone: use a teacher trained without data.context",
                          where=recipe.source)
    return teacher


def unlabelled_sentences(recipe, splitter, *, exclude: set[str], progress: bool = False) -> tuple[list[str], dict]:
    """The distinct sentences of the unlabelled inputs, in reading order, less those in ``exclude``;
    and counts of what was read, for the manifest. The inputs are read as ``stanceclf score`` reads
    a corpus; a bad record stops the run with its name (E030), or with ``on_error = "skip"`` is
    logged and counted. Ids need not be unique: nothing here is keyed by them. With ``max_unlabelled``,
    a seeded uniform sample of the distinct sentences is kept."""
    from stanceclf.errors import StanceclfError
    from stanceclf.infer.scoring.job import CorpusReader, ScoreOptions

    settings = recipe.distill
    options = ScoreOptions(input_format=settings.input_format, text_field=settings.text_field,
                           on_error=settings.on_error, max_chars=settings.max_chars)
    try:
        reader = CorpusReader([recipe.resolve(p) for p in settings.unlabelled], options, unique_ids=False,
                              log=lambda message: log.warning("distill: %s", message),
                              skip_advice='set distill.on_error = "skip" in the recipe to skip and count such records')
    except StanceclfError as error:
        raise RecipeError(f"distill.unlabelled: {error}", where=recipe.source) from None
    seen, sentences = set(), []
    counts = {"unlabelled_documents": 0, "unlabelled_sentences_read": 0, "unlabelled_left_out_as_labelled": 0}
    # A pool of millions of sentences takes minutes to read and split.
    with progress_bar(None, show=progress, desc="reading unlabelled", unit=" docs") as bar:
        for chunk in reader.chunks(splitter.split):
            counts["unlabelled_documents"] += len(chunk.documents)
            for sentence in chunk.sentences:
                counts["unlabelled_sentences_read"] += 1
                if sentence.text in exclude:
                    counts["unlabelled_left_out_as_labelled"] += 1
                elif sentence.text not in seen:
                    seen.add(sentence.text)
                    sentences.append(sentence.text)
            bar.update(len(chunk.documents))
    if settings.max_unlabelled is not None and len(sentences) > settings.max_unlabelled:
        # A uniform sample, kept in reading order: the same recipe and pool give the same sentences.
        drawn = np.random.default_rng(recipe.seed).choice(len(sentences), settings.max_unlabelled, replace=False)
        counts["unlabelled_sentences_available"] = len(sentences)
        sentences = [sentences[i] for i in sorted(drawn)]
    counts.update(unlabelled_skipped=reader.skipped, unlabelled_sentences=len(sentences))
    return sentences, counts


def teacher_probabilities(teacher, texts: list[str], batch_size: int) -> np.ndarray:
    """Calibrated probabilities of one teacher (its label order): the one place teachers are run."""
    return teacher.predict_proba(texts, batch_size=batch_size)


class TeacherScoreCache:
    """One teacher's calibrated probabilities by sentence text, in Parquet parts under
    ``<folder>/<teacher name>-<signature>/``; a part is renamed into place once complete."""

    def __init__(self, folder: Path, teacher):
        from stanceclf.infer.scoring.state import model_signature

        self.teacher = teacher
        # The teacher's weights, manifest (temperatures, max length, ...) and backend.
        self.signature = model_signature(teacher, {"use": "distillation targets"})
        self.folder = folder / f"{Path(teacher.path).name}-{self.signature[:16]}"

    def probabilities(self, texts: list[str], labels: list[str], batch_size: int, progress: bool) -> np.ndarray:
        """``(len(texts), len(labels))`` probabilities in the order of ``labels``, scoring only what is not cached.
        Under a lock: a second process (``accelerate launch``) waits, then finds every score cached."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(str(self.folder) + ".lock"):
            known = self._scored(texts, batch_size, progress)
        order = [self.teacher.labels.index(label) for label in labels]
        return np.asarray([known[t] for t in texts], dtype=np.float32).reshape(len(texts), -1)[:, order]

    def _scored(self, texts: list[str], batch_size: int, progress: bool) -> dict[str, np.ndarray]:
        """The cached scores, completed with those of ``texts`` not yet scored."""
        known = self._load()
        distinct = dict.fromkeys(texts)
        missing = [t for t in distinct if t not in known]
        name = Path(self.teacher.path).name
        log.warning("distill: teacher %s: %d of %d distinct sentences already scored (cached in %s)", name,
                    len(distinct) - len(missing), len(distinct), self.folder)
        if missing:
            with progress_bar(len(missing), show=progress, unit=" sent", desc=f"teacher {name}") as bar:
                for begin in range(0, len(missing), CHUNK_SENTENCES):
                    chunk = missing[begin: begin + CHUNK_SENTENCES]
                    scores = teacher_probabilities(self.teacher, chunk, batch_size)
                    self._save_part(chunk, scores)
                    known.update(zip(chunk, scores))
                    bar.update(len(chunk))
        return known

    def _load(self) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        known = {}
        for part in sorted(self.folder.glob("part-*.parquet")):
            table = pq.read_table(part).to_pydict()
            scores = np.column_stack([table[f"score_{label}"] for label in self.teacher.labels])
            known.update(zip(table["text"], scores))
        return known

    def _save_part(self, texts: list[str], scores: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {"text": texts, **{f"score_{label}": scores[:, j].astype(np.float32)
                                     for j, label in enumerate(self.teacher.labels)}}
        with replaced_atomically(self.folder / f"part-{uuid.uuid4().hex}.parquet") as partial:
            pq.write_table(pa.table(columns), partial)


def student_model(model, layers: int | list[int] | None) -> tuple[transformers.PreTrainedModel, list[int] | None]:
    """The base ``model`` itself, or with ``layers`` a shallower student keeping those of its layers
    (a count spreads them evenly from the first; see :func:`spread_layers`). Returns ``(model, kept)``."""
    import torch

    stack_path = architecture_of(model.config).layer_stack
    if layers is None:
        return model, None
    if stack_path is None:
        raise RecipeError(f"distill.student_layers: cannot build a student with fewer layers from a "
                          f"{model.config.model_type!r} base (supported: BERT and MPNet families)")
    *parents, name = stack_path.split(".")
    holder = model.base_model
    for parent in parents:
        holder = getattr(holder, parent)
    stack = getattr(holder, name)
    kept = spread_layers(len(stack), layers) if isinstance(layers, int) else list(layers)
    if max(kept) >= len(stack) or len(kept) > len(stack):
        raise RecipeError(f"distill.student_layers {layers!r} asks for layers the {len(stack)}-layer base "
                          f"does not have")
    setattr(holder, name, torch.nn.ModuleList([stack[i] for i in kept]))
    model.config.num_hidden_layers = len(kept)
    return model, kept


def spread_layers(total: int, count: int) -> list[int]:
    """``count`` of ``total`` layers, evenly spread from the first: 3 of 6 -> [0, 2, 4], 6 of 12 ->
    [0, 2, ..., 10]. The first layer is kept because it alone was trained on the embeddings' output;
    thanks to the residual connections, each later kept layer then reads an input close to the one it
    was trained on. (1, 3, 5 would feed layer 1 the embeddings it never saw; a list in the recipe
    chooses any layers.)"""
    if count > total:
        raise RecipeError(f"distill.student_layers = {count} is more than the base's {total} layers")
    return [i * total // count for i in range(count)]
