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
``flagged``
    The share of a document's sentences to which the model gives some label. Most sentences get
    none, so these documents hold most of the model's positive decisions, and with them its false
    positives: where precision is lost, annotation corrects it.
``random``
    A uniform sample without replacement, fixed by ``seed``: the baseline to compare with.

``blind`` tasks carry no prediction, for annotators who must decide without seeing the model's labels
(double annotation, or measuring the model on the new documents).

Before any strategy, documents can be passed over: those already annotated (``exclude``), those shorter than
``min_chars`` (a caption or a two-line brief would top a mean over its sentences), and, with ``sample``, all but a
uniform sample of that many of the rest, drawn with ``seed`` (a pool of a million sentences need not be scored
whole to find fifty articles worth reading; the sample is drawn from the record numbers in one quick pass over
the corpus before scoring, so a resumed run draws the same one).

Corpora are read and processed as ``stanceclf score`` processes them (a
:class:`~stanceclf.infer.scoring.job.ResumableRun`): in chunks, bad records and the lock as in
``score``, each document's priority appended to ``OUT.partial`` with a resume state beside it, so
that an interrupted run started again with the same command goes on where it stopped. The ``n``
best are picked from that file at the end (only they are held in memory), read again and predicted.

Pre-annotations put one ``labels`` result per predicted label on each sentence, with the
label's calibrated score. Offsets are Python string indices (Unicode code points), which is
what Label Studio's ``<Text>`` tag counts since its offsets fix for astral characters (emoji);
every result also carries its text, from which the reader repairs exports made by older
versions that counted UTF-16 code units.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stanceclf.data.label_studio_config import LABELS_CONTROL, TEXT_FIELD, TEXT_OBJECT
from stanceclf.data.readers.native import iter_jsonl
from stanceclf.data.readers.validation import SpanChecker
from stanceclf.errors import InputRecordError, ScoringSetupError, StanceclfError
from stanceclf.files import write_atomically
from stanceclf.infer.results import Prediction
from stanceclf.infer.scoring.job import SCORE_DEFAULTS, Chunk, ResumableRun, run_locked, score_options
from stanceclf.infer.scoring.state import ResumeState
from stanceclf.model.decision import decide, reported_scores

STRATEGIES = ("uncertainty", "disagreement", "flagged", "random")
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
    #: Input records an interrupted run had already done.
    resumed_from: int = 0
    #: Documents passed over as shorter than ``min_chars``, and as outside the ``sample``.
    short: int = 0
    unsampled: int = 0


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
        self.seed = seed

    def decisions(self, units: list, thresholds: np.ndarray, batch_size: int, *, chunk: int) -> list[np.ndarray]:
        """The passes' decisions on the ``chunk``-th chunk of a run; its dropout masks come from the seed
        and the chunk's number, so that a resumed run draws those of an uninterrupted one."""
        import torch

        with torch.random.fork_rng(devices=[]):  # dropout masks from our seed, the caller's RNG untouched
            torch.manual_seed(self.seed + chunk)
            return [decide(self.model.score_units(units, batch_size=batch_size)[0], thresholds)
                    for _ in range(self.passes)]


@dataclass(frozen=True)
class Picking:
    """What to pick: ``n`` documents under ``strategy``, passing over the ids in ``exclude``, documents shorter
    than ``min_chars`` and, with ``sample``, all but a seeded sample of that many of the others."""

    strategy: str = "uncertainty"
    n: int = 50
    seed: int = 13
    passes: int = 8
    exclude: frozenset[str] = frozenset()
    sample: int | None = None
    min_chars: int = 0

    def shaping(self) -> dict:
        """What a resumed run must share with the interrupted one: all that sets the priorities (``n`` does
        not: the picks are made from every priority at the end)."""
        digest = hashlib.sha256("\n".join(sorted(self.exclude)).encode()).hexdigest()[:12]
        seeded = self.strategy in ("disagreement", "random") or self.sample is not None
        return {"strategy": self.strategy, "seed": self.seed if seeded else None,
                "passes": self.passes if self.strategy == "disagreement" else None,
                "exclude": f"{len(self.exclude)} ids, sha256 {digest}", "sample": self.sample,
                "min_chars": self.min_chars}


@dataclass
class SuggestState(ResumeState):
    """A suggest run's resume state, with the documents passed over (already annotated, too short, not in the
    sample) and the chunks scored (the disagreement passes' dropout masks depend on the chunk's number)."""

    excluded: int = 0
    short: int = 0
    unsampled: int = 0
    chunks: int = 0


def suggest(paths: list[str | Path], model, *, strategy: str = "uncertainty", n: int = 50, seed: int = 13,
            input_format: str = "auto", id_field: str | None = None, text_field: str = "text",
            max_chars: int = SCORE_DEFAULTS.max_chars, on_error: str = "stop", exclude: set[str] = frozenset(),
            sample: int | None = None, min_chars: int = 0, passes: int = 8, batch_size: int = SCORE_DEFAULTS.batch_size,
            chunk_sentences: int = SCORE_DEFAULTS.chunk_sentences, out: str | Path | None = None,
            overwrite: bool = False, blind: bool = False, progress: bool = True, log=None) -> SuggestSummary:
    """Pick the ``n`` documents of ``paths`` with the highest priority under ``strategy`` (see the
    module docstring), each with the model's sentence predictions. Documents whose id is in
    ``exclude`` (e.g. those already annotated) are passed over, and so are documents shorter than ``min_chars``;
    with ``sample``, only a uniform sample of that many of the others (drawn with ``seed``) is scored.

    With ``out``, the picks are written there as Label Studio tasks (:func:`write_tasks`) and the run
    resumes as ``stanceclf score`` does: an interrupted call, made again, goes on where it stopped
    (``overwrite`` starts again); ``blind`` tasks carry no prediction. Without ``out`` nothing is written:
    the run works in a temporary folder."""
    if strategy not in STRATEGIES:
        raise ScoringSetupError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if n < 1:
        raise ScoringSetupError(f"--n must be at least 1, got {n}")
    if sample is not None and sample < n:
        raise ScoringSetupError(f"--sample must be at least --n ({n}), got {sample}: the picks come from the sample")
    if min_chars < 0:
        raise ScoringSetupError(f"--min-chars must be at least 0, got {min_chars}")
    options = score_options(None, {
        "input_format": input_format, "output_format": "jsonl", "id_field": id_field, "text_field": text_field,
        "on_error": on_error, "max_chars": max_chars, "chunk_sentences": chunk_sentences, "batch_size": batch_size,
        "overwrite": overwrite})
    picking = Picking(strategy, n, seed, passes, frozenset(exclude), sample, min_chars)
    paths = [Path(p) for p in paths]
    if out is not None:
        return _SuggestRun(paths, Path(out), model, options, picking, log, blind=blind).suggestions(progress)
    with tempfile.TemporaryDirectory(prefix="stanceclf-suggest-") as work:
        run = _SuggestRun(paths, Path(work) / "tasks.json", model, options, picking, log, write=False)
        return run.suggestions(progress)


class _SuggestRun(ResumableRun):
    """Each chunk's documents scored for their priority, one row per document in ``OUT.partial``
    (``doc_id``, record number, priority); at the end the ``n`` best, read again and predicted."""

    state_type = SuggestState

    def __init__(self, paths: list[Path], out: Path, model, options, picking: Picking, log=None, *,
                 write: bool = True, blind: bool = False):
        super().__init__(paths, out, model, options, log)
        self.picking, self.write, self.activity, self.blind = picking, write, picking.strategy, blind
        disagreement = picking.strategy == "disagreement"
        self.committee = _Committee(model, picking.passes, picking.seed) if disagreement else None
        self.random: random.Random | None = None
        self.picked: list[Suggestion] = []
        self.sampled: set[int] | None = None  # record numbers, drawn at the first record read

    def shaping(self) -> dict:
        # --max-chars decides which records are bad, and so which can be in a sample: with one, it must stay.
        sampled = {"max_chars": self.options.max_chars} if self.picking.sample is not None else {}
        return {**super().shaping(), **self.picking.shaping(), **sampled}

    def suggestions(self, progress: bool) -> SuggestSummary:
        """Run under the output's lock: the picks, and counts of what was read."""
        summary = run_locked(self, progress)
        return SuggestSummary(summary.documents, summary.skipped, self.state.excluded, self.picked,
                              summary.resumed_from, self.state.short, self.state.unsampled)

    def passes_over(self, record) -> bool:
        if record.doc_id in self.picking.exclude:
            self.state.excluded += 1
        elif len(record.text) < self.picking.min_chars:
            self.state.short += 1
        elif self.picking.sample is not None and record.number not in self._sample():
            self.state.unsampled += 1
        else:
            return False
        return True

    def _eligible(self, record) -> bool:
        return (record.error is None and record.doc_id not in self.picking.exclude
                and len(record.text) >= self.picking.min_chars)

    def _sample(self) -> set[int]:
        """The record numbers of the sample: ``sample`` of the documents neither bad, excluded nor short,
        drawn with the seed from one pass over the corpus (the same draw in a resumed run). Its own stream of
        the seed: the random strategy's keys are drawn from the seed too, and must not follow the draw."""
        if self.sampled is None:
            eligible = [record.number for record in self.records() if self._eligible(record)]
            if self.picking.sample >= len(eligible):
                self.log(f"the sample ({self.picking.sample}) is not smaller than the {len(eligible)} documents "
                         "left after --exclude, --min-chars and bad records: all of them are scored")
            size = min(self.picking.sample, len(eligible))
            self.sampled = set(random.Random(f"sample:{self.picking.seed}").sample(eligible, size))
        return self.sampled

    def process_chunk(self, chunk: Chunk) -> tuple[list[dict], int]:
        truncated = 0
        if self.picking.strategy == "random":
            # The n largest of uniform keys are a uniform sample; predictions only for those, at the end.
            priorities = self._random_keys(len(chunk.documents))
        else:
            per_sentence, truncated = self._sentence_priorities(chunk.units(self.model))  # as score reads them
            priorities = [float(share.mean()) if len(share) else 0.0 for _, share in chunk.by_document(per_sentence)]
        self.state.chunks += 1
        return [{"doc_id": record.doc_id, "record": record.number, "priority": priority}
                for (record, _), priority in zip(chunk.documents, priorities)], truncated

    def _random_keys(self, count: int) -> list[float]:
        if self.random is None:  # a resumed run draws again the keys of the documents done before
            self.random = random.Random(self.picking.seed)
            for _ in range(self.state.documents):
                self.random.random()
        return [self.random.random() for _ in range(count)]

    def _sentence_priorities(self, units: list) -> tuple[np.ndarray, int]:
        thresholds = self.model.threshold_vector
        probs, truncated = self.model.score_units(units, batch_size=self.options.batch_size)
        if self.picking.strategy == "flagged":
            return decide(probs, thresholds).any(axis=1).astype(np.float64), sum(truncated)
        if self.committee is None:
            return sentence_uncertainty(reported_scores(probs), thresholds), sum(truncated)
        passes = self.committee.decisions(units, thresholds, self.options.batch_size, chunk=self.state.chunks)
        return sentence_disagreement(decide(probs, thresholds), passes), sum(truncated)

    def complete(self) -> None:
        self.picked = self._pick()
        self.mark_finishing()
        if self.write:
            write_tasks(SuggestSummary(suggestions=self.picked), self.model, self.out, strategy=self.picking.strategy,
                        overwrite=True, blind=self.blind)
        self.files.publish_errors(self.state.errors_written > 0)
        self.files.progress.unlink()
        self.writer.discard()  # last: with the progress file, the priorities are what a rerun resumes from

    def finished_before(self, state) -> bool:
        return False  # the priorities outlive the progress file (see complete)

    def _pick(self) -> list[Suggestion]:
        """The ``n`` documents of highest priority (of equal ones, the earlier), read again and predicted."""
        best: list[tuple[float, int, str]] = []  # a min-heap: the root is the first to give way
        with open(self.files.partial, encoding="utf-8") as rows:
            for row in map(json.loads, rows):
                entry = (row["priority"], -row["record"], row["doc_id"])
                if len(best) < self.picking.n:
                    heapq.heappush(best, entry)
                elif entry[:2] > best[0][:2]:
                    heapq.heapreplace(best, entry)
        priorities = {-number: priority for priority, number, _ in best}
        records = {}
        for record in self.records():
            if record.number in priorities:
                records[record.number] = record
                if len(records) == len(priorities):
                    break
        order = sorted(priorities, key=lambda number: (-priorities[number], number))
        for number in order:
            if records[number].error is not None:  # readable when it was scored, not now (a lower --max-chars)
                raise InputRecordError(f"this document was scored and picked, but cannot be read again now "
                                       f"({records[number].error}); rerun with the options it was scored with, "
                                       "or --overwrite", where=records[number].where)
        predictions = self.model.classify([records[number].text for number in order],
                                          batch_size=self.options.batch_size)
        return [Suggestion(records[number].doc_id, records[number].text, records[number].where, priorities[number],
                           predicted) for number, predicted in zip(order, predictions)]

    def why_empty(self, log: Path) -> str:
        if self.state.excluded or self.state.short:
            short = f", shorter than --min-chars ({self.state.short})" if self.picking.min_chars else ""
            return f"every record was excluded ({self.state.excluded}){short} or bad ({self.summary.skipped})"
        return super().why_empty(log)

    def refuse_empty_result(self, writer) -> None:
        try:
            super().refuse_empty_result(writer)
        except InputRecordError as error:
            if self.write:
                raise
            raise InputRecordError(error.detail) from None  # not the temporary folder's name


def model_version(model) -> str:
    """What Label Studio shows as a prediction's model: schema, base and a digest of the weights
    (of the manifest for a model never saved), so that two models never share a version."""
    from stanceclf.model.layout import weights_digest
    from stanceclf.model.manifest import manifest_digest

    manifest = model.manifest
    digest = weights_digest(model.path) or manifest_digest(manifest)
    schema = manifest.label_schema
    return f"{schema.name}-{schema.version} {manifest.base_model} {digest[:12]}"


def label_studio_task(suggestion: Suggestion, model, *, version: str | None = None, strategy: str = "",
                      blind: bool = False) -> dict:
    """One Label Studio task: the document under ``data`` and its pre-annotation under ``predictions``
    (none when ``blind``)."""
    results = [
        {"id": f"s{index}-{label}", "from_name": LABELS_CONTROL, "to_name": TEXT_OBJECT, "type": "labels",
         "value": {"start": p.start, "end": p.end, "text": p.text, "labels": [label]}, "score": p.scores[label]}
        for index, p in enumerate(suggestion.predictions) for label in p.labels
    ]
    # The prediction's score orders Label Studio's own uncertainty sampling: the model's confidence.
    scores = np.array([[p.scores[label] for label in model.labels] for p in suggestion.predictions])
    confidence = 1.0 - float(sentence_uncertainty(scores, model.threshold_vector).mean()) if len(scores) else 1.0
    task = {
        "data": {TEXT_FIELD: suggestion.text, DOC_ID_FIELD: suggestion.doc_id},
        "meta": {"strategy": strategy, "priority": round(suggestion.priority, 6), "source": suggestion.where},
        "predictions": [{"model_version": version or model_version(model), "score": round(confidence, 6),
                         "result": results}],
    }
    if blind:  # not even the priority: it tells how unsure the model is
        del task["predictions"], task["meta"]["priority"]
    return task


def write_tasks(summary: SuggestSummary, model, out: str | Path, *, strategy: str, overwrite: bool = False,
                blind: bool = False) -> Path:
    """Write the suggestions as a Label Studio task list (JSON), all at once: an interrupted or
    failed run leaves no partial file. ``blind`` tasks carry no prediction."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise StanceclfError("the output exists; pass --overwrite to replace it", where=str(out))
    if not out.parent.is_dir():
        raise ScoringSetupError("the output's folder does not exist", where=str(out.parent))
    version = model_version(model)
    tasks = [label_studio_task(s, model, version=version, strategy=strategy, blind=blind)
             for s in summary.suggestions]
    write_atomically(out, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    return out


def annotated_ids(paths: list[str | Path]) -> set[str]:
    """The document ids of Label Studio task files or exports (JSON or JSON_MIN): ``data.doc_id``, as
    :func:`label_studio_task` writes it; or of stanceclf's stand-off annotations (JSONL, one record per document,
    as ``sheets import`` and ``adjudicate import`` write them): ``doc_id``, and ``record``, the corpus id of a
    document stored by reference. A file that names none is an error (likely the wrong file)."""
    ids: set[str] = set()
    for path in map(Path, paths):
        found = _standoff_ids(path) if path.suffix.lower() == ".jsonl" else _task_ids(path)
        if not found:
            raise ScoringSetupError(f"no task here carries data.{DOC_ID_FIELD} and no record a doc_id: not a file "
                                    "of suggested tasks, their export, or stand-off annotations", where=str(path))
        ids |= found
    return ids


def _task_ids(path: Path) -> set[str]:
    try:
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ScoringSetupError(f"cannot read it: {exc}", where=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ScoringSetupError(f"cannot read it as a Label Studio JSON file: {exc} (stand-off annotations are "
                                ".jsonl files)", where=str(path)) from None
    found = set()
    for task in tasks if isinstance(tasks, list) else []:
        data = task.get("data", task) if isinstance(task, dict) else None  # full export, or JSON_MIN row
        if isinstance(data, dict) and data.get(DOC_ID_FIELD) is not None:
            found.add(str(data[DOC_ID_FIELD]))
    return found


def _standoff_ids(path: Path) -> set[str]:
    """``doc_id`` and ``record`` of each record of a stand-off file, read line by line as the native reader
    reads it (a bad line is an error naming the file and line)."""
    found = set()
    try:
        for _, where, record in iter_jsonl(path, SpanChecker()):
            if not isinstance(record, dict) or record.get("doc_id") is None:
                raise ScoringSetupError("no doc_id: not a stand-off annotation record", where=where)
            found.add(str(record["doc_id"]))
            if record.get("record") is not None:
                found.add(str(record["record"]))
    except OSError as exc:
        raise ScoringSetupError(f"cannot read it: {exc}", where=str(path)) from None
    return found
