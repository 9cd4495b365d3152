"""Active learning: pick the documents of a corpus most worth annotating next, and write them as
Label Studio tasks pre-annotated with the model's labels.

Whole documents are picked, because annotators label whole articles (a sentence is judged in
the context of its article). A strategy gives each document a *priority*; the ``n`` highest
are written, highest first:

``uncertainty``
    How close the model's scores are to its thresholds. A sentence's uncertainty is
    ``1 - margin`` of its least certain label, where the margin is the distance from score to
    threshold as a share of the room on that side (``(t - p) / t`` below the threshold,
    ``(p - t) / (1 - t)`` above): 1 at the threshold, 0 at a score of 0 or 1. A document's
    priority is the mean over its sentences: the share of the annotator's reading spent on
    sentences the model is unsure of.
``disagreement``
    Monte Carlo dropout as a committee: ``passes`` forward passes with dropout switched on
    (each a slightly different model) are compared with the calibrated decision of the model
    as loaded. A sentence's disagreement is the share of passes that decide some label the
    other way (the highest over labels); a document's priority is the mean over its sentences.
    It finds the sentences whose labels hang on small changes of the weights, which scores near
    a threshold do not always show.
``random``
    A uniform sample without replacement, fixed by ``seed``: the baseline to compare with.

Corpora are read exactly as ``stanceclf score`` reads them
(:func:`~stanceclf.infer.scoring.inputs.iter_records`), in chunks, keeping only the best ``n``
documents in memory.

Pre-annotations put one ``labels`` result per predicted label on each sentence, with the
label's calibrated score. Offsets are Python string indices (Unicode code points), which is
what Label Studio's ``<Text>`` tag counts since its offsets fix for astral characters (emoji);
every result also carries its text, from which the reader repairs exports made by older
versions that counted UTF-16 code units.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stanceclf.data.label_studio_config import LABELS_CONTROL, TEXT_FIELD, TEXT_OBJECT
from stanceclf.errors import InputRecordError, ScoringSetupError, StanceclfError
from stanceclf.infer.results import Prediction
from stanceclf.infer.scoring.inputs import Fields, InputRecord, check_inputs, iter_records
from stanceclf.infer.scoring.job import SCORE_DEFAULTS, DuplicateIds
from stanceclf.model.decision import decide, reported_scores

STRATEGIES = ("uncertainty", "disagreement", "random")
#: The task data key holding the corpus document id (read back by the Label Studio reader).
DOC_ID_FIELD = "doc_id"


@dataclass
class Suggestion:
    """One picked document: where it came from, its priority under the strategy, its predictions."""

    doc_id: str
    text: str
    where: str
    priority: float
    predictions: list[Prediction] = field(default_factory=list)


@dataclass
class SuggestSummary:
    documents: int = 0
    skipped: int = 0
    excluded: int = 0
    suggestions: list[Suggestion] = field(default_factory=list)


def sentence_uncertainty(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(n,)``: 1 minus the smallest relative margin between a sentence's scores and the thresholds."""
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(1, -1)
    room = np.where(scores < thresholds, thresholds, 1.0 - thresholds)
    # No room on that side (a threshold of 0 or 1 reached): the decision cannot be closer to certain.
    margin = np.divide(np.abs(scores - thresholds), room, out=np.ones_like(scores), where=room > 0)
    return 1.0 - np.clip(margin, 0.0, 1.0).min(axis=1, initial=1.0)


def sentence_disagreement(decision: np.ndarray, passes: list[np.ndarray]) -> np.ndarray:
    """``(n,)``: the share of ``passes`` (bool decisions) that differ from ``decision`` on some label,
    the highest share over labels."""
    if not passes:
        return np.zeros(len(decision))
    flips = np.mean([p != decision for p in passes], axis=0)
    return flips.max(axis=1, initial=0.0)


class _Committee:
    """The model with dropout switched on, for the ``disagreement`` strategy: a copy, so that the
    loaded (and cached, shared) model stays in inference mode."""

    def __init__(self, model, passes: int, seed: int):
        import copy

        import torch

        from stanceclf.model.native import transformers_model

        if passes < 1:
            raise ScoringSetupError(f"--passes must be at least 1, got {passes}")
        # A directory's BERT runs in plain torch, without dropout layers: its transformers twin has them.
        twin = transformers_model(model.model)
        if twin is model.model:
            twin = copy.deepcopy(twin)
        if not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in twin.modules()):
            raise ScoringSetupError("this model has no dropout, so its passes cannot disagree; "
                                    "use --strategy uncertainty")
        self.model = type(model)(twin, model.tokenizer, model.manifest, model.path)
        self.model.model.train()  # after __init__, which puts it in eval mode
        self.passes = passes
        self.generator_seed = seed

    def decisions(self, texts: list[str], thresholds: np.ndarray, batch_size: int) -> list[np.ndarray]:
        import torch

        with torch.random.fork_rng(devices=[]):  # dropout masks from our seed, the caller's RNG untouched
            torch.manual_seed(self.generator_seed)
            self.generator_seed += 1
            return [decide(self.model.predict_proba(texts, batch_size=batch_size), thresholds)
                    for _ in range(self.passes)]


def suggest(paths: list[str | Path], model, *, strategy: str = "uncertainty", n: int = 50, seed: int = 13,
            input_format: str = "auto", id_field: str | None = None, text_field: str = "text",
            max_chars: int = SCORE_DEFAULTS.max_chars, on_error: str = "stop", exclude: set[str] = frozenset(),
            passes: int = 8, batch_size: int = SCORE_DEFAULTS.batch_size, chunk_sentences: int = 1024,
            progress: bool = True, log=None) -> SuggestSummary:
    """Pick the ``n`` documents of ``paths`` with the highest priority under ``strategy`` (see the
    module docstring), each with the model's sentence predictions. Documents whose id is in
    ``exclude`` (e.g. those already annotated) are passed over."""
    if strategy not in STRATEGIES:
        raise ScoringSetupError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if n < 1:
        raise ScoringSetupError(f"--n must be at least 1, got {n}")
    if on_error not in ("stop", "skip"):
        raise ScoringSetupError(f"--on-error must be 'stop' or 'skip', got {on_error!r}")
    paths = [Path(p) for p in paths]
    check_inputs(paths, input_format)
    picker = _Picker(model, strategy, n, seed, passes, batch_size, chunk_sentences,
                     log or (lambda message: print(message, file=sys.stderr)))
    records = iter_records(paths, input_format, fields=Fields(id_field, text_field), max_chars=max_chars)
    return picker.run(records, on_error, set(exclude), progress)


class _Picker:
    def __init__(self, model, strategy, n, seed, passes, batch_size, chunk_sentences, log):
        self.model, self.strategy, self.n = model, strategy, n
        self.batch_size, self.chunk_sentences, self.log = batch_size, chunk_sentences, log
        self.random = random.Random(seed)
        self.committee = _Committee(model, passes, seed) if strategy == "disagreement" else None
        self.thresholds = model.threshold_vector
        # A min-heap of (priority, -record number, Suggestion): the root is the first to give way,
        # and of equal priorities the earlier record stays.
        self.best: list[tuple[float, int, Suggestion]] = []
        self.summary = SuggestSummary()

    def run(self, records, on_error: str, exclude: set[str], progress: bool) -> SuggestSummary:
        from tqdm import tqdm

        ids = DuplicateIds()
        chunk, pending = [], 0
        with tqdm(total=None, unit=" doc", disable=not progress, dynamic_ncols=True, desc=self.strategy,
                  file=sys.stderr) as bar:
            for record in records:
                record = ids.check(record)
                bar.update(1)
                if record.error is not None:
                    self._bad_record(record, on_error)
                elif record.doc_id in exclude:
                    self.summary.excluded += 1
                elif self.strategy == "random":
                    # The n largest of uniform keys are a uniform sample; predictions only for those.
                    self.summary.documents += 1
                    self._offer(self.random.random(), record, None)
                else:
                    self.summary.documents += 1
                    chunk.append((record, self.model.split(record.text)))
                    pending += len(chunk[-1][1])
                    if pending >= self.chunk_sentences:
                        self._score(chunk)
                        chunk, pending = [], 0
            self._score(chunk)
        if not self.best:
            counts = self.summary
            raise InputRecordError("no document to suggest: " + (
                f"every record was excluded ({counts.excluded}) or bad ({counts.skipped})"
                if counts.excluded or counts.skipped else "the inputs hold no records"))
        picked = [entry[2] for entry in sorted(self.best, key=lambda e: (-e[0], -e[1]))]
        self._predict_missing(picked)
        self.summary.suggestions = picked
        return self.summary

    def _bad_record(self, record: InputRecord, on_error: str) -> None:
        where = f"record {record.number} ({record.where}, id {record.doc_id!r})"
        if on_error == "stop":
            raise InputRecordError(record.error + "; pass --on-error skip to pass over it", where=where)
        self.summary.skipped += 1
        self.log(f"skipped {where}: {record.error}")

    def _offer(self, priority: float, record: InputRecord, predictions) -> None:
        entry = (priority, -record.number, Suggestion(record.doc_id, record.text, record.where, priority,
                                                       predictions or []))
        if len(self.best) < self.n:
            heapq.heappush(self.best, entry)
        elif entry[:2] > self.best[0][:2]:
            heapq.heapreplace(self.best, entry)

    def _score(self, chunk) -> None:
        """Predict a chunk's sentences and offer each document with its priority."""
        if not chunk:
            return
        texts = [s.text for _, sentences in chunk for s in sentences]
        probs, truncated = self.model.proba_and_truncation(texts, batch_size=self.batch_size)
        predictions = self.model.predictions([(s.start, s.end, s.text) for _, ss in chunk for s in ss],
                                             probs, truncated)
        if self.committee is not None:
            decision = decide(probs, self.thresholds)
            per_sentence = sentence_disagreement(decision, self.committee.decisions(texts, self.thresholds,
                                                                                    self.batch_size))
        else:
            per_sentence = sentence_uncertainty(reported_scores(probs), self.thresholds)
        cursor = 0
        for record, sentences in chunk:
            span = slice(cursor, cursor + len(sentences))
            self._offer(float(per_sentence[span].mean()) if sentences else 0.0, record, predictions[span])
            cursor += len(sentences)

    def _predict_missing(self, picked: list[Suggestion]) -> None:
        """Random picks were chosen without the model: predict them now."""
        missing = [s for s in picked if not s.predictions]
        for suggestion, predictions in zip(missing, self.model.classify([s.text for s in missing],
                                                                        batch_size=self.batch_size)):
            suggestion.predictions = predictions


def model_version(model) -> str:
    """What Label Studio shows as a prediction's model: schema, base and a digest of the weights
    (of the manifest for a model never saved), so that two models never share a version."""
    from stanceclf.model.directory import manifest_digest, weights_digest

    manifest = model.manifest
    digest = weights_digest(model.path) or manifest_digest(manifest)
    schema = manifest.label_schema
    return f"{schema.name}-{schema.version} {manifest.base_model} {digest[:12]}"


def label_studio_task(suggestion: Suggestion, model, *, version: str | None = None, strategy: str = "") -> dict:
    """One Label Studio task: the document under ``data`` and its pre-annotation under ``predictions``."""
    results = [
        {"id": f"s{index}-{label}", "from_name": LABELS_CONTROL, "to_name": TEXT_OBJECT, "type": "labels",
         "value": {"start": p.start, "end": p.end, "text": p.text, "labels": [label]}, "score": p.scores[label]}
        for index, p in enumerate(suggestion.predictions) for label in p.labels
    ]
    # The prediction's score orders Label Studio's own uncertainty sampling: the model's confidence.
    scores = np.array([[p.scores[label] for label in model.labels] for p in suggestion.predictions])
    confidence = 1.0 - float(sentence_uncertainty(scores, model.threshold_vector).mean()) if len(scores) else 1.0
    return {
        "data": {TEXT_FIELD: suggestion.text, DOC_ID_FIELD: suggestion.doc_id},
        "meta": {"strategy": strategy, "priority": round(suggestion.priority, 6), "source": suggestion.where},
        "predictions": [{"model_version": version or model_version(model), "score": round(confidence, 6),
                         "result": results}],
    }


def write_tasks(summary: SuggestSummary, model, out: str | Path, *, strategy: str, overwrite: bool = False) -> Path:
    """Write the suggestions as a Label Studio task list (JSON), all at once: an interrupted or
    failed run leaves no partial file."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise StanceclfError("the output exists; pass --overwrite to replace it", where=str(out))
    if not out.parent.is_dir():
        raise ScoringSetupError("the output's folder does not exist", where=str(out.parent))
    version = model_version(model)
    tasks = [label_studio_task(s, model, version=version, strategy=strategy) for s in summary.suggestions]
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, out)
    return out


def annotated_ids(paths: list[str | Path]) -> set[str]:
    """The document ids of Label Studio task files or exports (JSON or JSON_MIN): ``data.doc_id``, as
    :func:`label_studio_task` writes it. A file that names none is an error (likely the wrong file)."""
    ids: set[str] = set()
    for path in map(Path, paths):
        try:
            tasks = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScoringSetupError(f"cannot read it as a Label Studio JSON file: {exc}", where=str(path)) from None
        found = set()
        for task in tasks if isinstance(tasks, list) else []:
            data = task.get("data", task) if isinstance(task, dict) else None  # full export, or JSON_MIN row
            if isinstance(data, dict) and data.get(DOC_ID_FIELD) is not None:
                found.add(str(data[DOC_ID_FIELD]))
        if not found:
            raise ScoringSetupError(f"no task here carries data.{DOC_ID_FIELD}: not a file of suggested tasks "
                                    "or their export", where=str(path))
        ids |= found
    return ids
