"""Scoring on a Ray cluster: the local engine's rows, computed by many machines.

Two entry points:

- :class:`SentencePredictor`, a callable class for ``ray.data.Dataset.map_batches``:
  documents in (``doc_id`` and ``text`` columns), the rows of
  :class:`~stanceclf.infer.results.RowSpec` out. Each actor loads the model once.
- :func:`score_corpus_on_ray`, a whole scoring job: the inputs of ``stanceclf score``, read
  on this machine with the same bad-record rules, split and scored on the cluster, and
  written by the same writers in the same order as the local engine.

How a job runs. The driver (this process) reads and checks every record as the local
engine does. Ray tasks split the documents into sentences and return the counts, with which
the driver cuts the corpus into the local engine's chunks
(:class:`~stanceclf.infer.scoring.job.ChunkFiller`), one object-store block per chunk. An
actor pool of :class:`SentencePredictor` splits and scores each block the way the local
engine scores a chunk: the forward pass's float results depend on which sentences share a
batch, so the same chunks give the local engine's scores to the last bit. Ray Data returns
the blocks in order; the driver checks every row against the counts (none lost, none
repeated), appends it to ``OUT.partial`` and gives the output its final name when complete.
An actor that dies is restarted and its block retried: Ray Data's defaults for actor pools
(``max_restarts=-1``, ``max_task_retries=-1``) are relied on, and tested. A job whose driver
stops is not resumed: run again, it starts over.

Ray is an optional extra (``pip install 'stanceclf[ray]'``), imported only when a job runs;
tested with the ``compute=ActorPoolStrategy(size=n)`` form of ``map_batches`` that Ray 2.60
documents (its ``concurrency=`` is deprecated there).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Iterator

from stanceclf.errors import InputRecordError, ModelDirectoryError, RayEngineError, ScoringSetupError
from stanceclf.infer.results import RowSpec
from stanceclf.data.corpus_inputs import text_problem
from stanceclf.infer.scoring.job import (SCORE_DEFAULTS, ChunkFiller, ScoreOptions, ScoreSummary, ScoringRun,
                                         run_locked, score_options)
from stanceclf.infer.scoring.outputs import make_writer
from stanceclf.progress import progress_bar

if TYPE_CHECKING:
    from stanceclf.infer.model import StanceModel

#: Documents per sentence-counting task.
COUNT_GROUP = 256
#: The extra column of ``with_truncated=True``: how many of a row's sentences were cut at the model's max_length.
TRUNCATED_COLUMN = "truncated"


def import_ray() -> ModuleType:
    """Ray, or a coded error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayEngineError(f"the Ray engine needs Ray, which is not installed ({exc}); "
                             "pip install 'stanceclf[ray]'") from None
    return ray


@dataclass(frozen=True)
class ModelFiles:
    """A model directory's files in memory, for workers that cannot read the directory:
    ``ray.put`` it once and pass the reference as the predictor's ``model``."""

    files: dict[str, bytes]

    @classmethod
    def read(cls, path: str | Path) -> "ModelFiles":
        path = Path(path)
        if not path.is_dir():
            raise ModelDirectoryError("model directory not found", where=str(path))
        return cls({file.name: file.read_bytes() for file in sorted(path.iterdir()) if file.is_file()})

    def load(self, backend: str = "torch") -> StanceModel:
        """The model, loaded from a temporary copy of the files (removed once loaded)."""
        from stanceclf.infer.model import StanceModel

        with tempfile.TemporaryDirectory(prefix="stanceclf-model-") as folder:
            for name, data in self.files.items():
                (Path(folder) / name).write_bytes(data)
            model = StanceModel.from_pretrained(folder, fast=backend)
        model.path = None  # the temporary copy is gone
        return model


def _load_on_worker(model, backend: str):
    from stanceclf.infer.predict import load

    if model is None or isinstance(model, (str, os.PathLike)):
        return load(model, fast=backend)
    if not isinstance(model, ModelFiles):
        model = import_ray().get(model)  # an ObjectRef of ModelFiles
    if not isinstance(model, ModelFiles):
        raise TypeError(f"model must be a directory, ModelFiles or a reference to one, not {type(model).__name__}")
    return model.load(backend)


class SentencePredictor:
    """Documents in, scored rows out: a callable class for ``Dataset.map_batches``, one model per actor.

    ``model``: a model directory that every worker can read, a :class:`ModelFiles` (or
    ``ray.put`` of one) for workers that cannot, or None for the shipped model; ``backend``
    as in :func:`stanceclf.infer.predict.load`. A batch (pyarrow, pandas or numpy format)
    needs ``id_column`` and ``text_column``; the result is a pyarrow table with the columns
    of :class:`~stanceclf.infer.results.RowSpec` (a row per sentence, or per document with
    ``per_document``) in batch order, plus ``truncated`` with ``with_truncated``. All the
    sentences of a batch are scored together in length-sorted forward passes of
    ``batch_size``. A text that cannot be scored raises :class:`InputRecordError` naming its
    document.
    """

    def __init__(self, model=None, *, backend: str = "torch", per_document: bool = False,
                 batch_size: int = SCORE_DEFAULTS.batch_size, id_column: str = "doc_id", text_column: str = "text",
                 max_chars: int = SCORE_DEFAULTS.max_chars, with_truncated: bool = False, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = _load_on_worker(model, backend)
        self.spec = RowSpec(tuple(self.model.labels), per_document=per_document)
        self.batch_size, self.max_chars, self.with_truncated = batch_size, max_chars, with_truncated
        self.id_column, self.text_column = id_column, text_column

    def __call__(self, batch):
        import pyarrow as pa

        doc_ids, texts = _column(batch, self.id_column), _column(batch, self.text_column)
        for doc_id, text in zip(doc_ids, texts):
            problem = text_problem(text, self.max_chars)
            if problem:
                raise InputRecordError(problem, where=f"document {doc_id!r}")
        rows, truncated = [], []
        for doc_id, predictions in zip(doc_ids, self.model.classify(texts, batch_size=self.batch_size)):
            rows.extend(self.spec.rows(str(doc_id), predictions))
            cut = [int(p.truncated) for p in predictions]
            truncated.extend([sum(cut)] if self.spec.per_document else cut)
        table = pa.Table.from_pylist(rows, schema=self.spec.arrow_schema())
        if self.with_truncated:
            table = table.append_column(TRUNCATED_COLUMN, pa.array(truncated, type=pa.int64()))
        return table


def _column(batch, name: str) -> list:
    names = list(batch.column_names) if hasattr(batch, "column_names") else list(batch.keys())
    if name not in names:
        raise InputRecordError(f"the batch has no column {name!r} (columns: {names[:10]})")
    column = batch[name]
    return column.to_pylist() if hasattr(column, "to_pylist") else list(column.tolist())


def count_sentences(splitter: dict, texts: list[str]) -> list[int]:
    """Sentences per text, split by the model's splitter (a Ray task: the driver only cuts chunks)."""
    from stanceclf.data.sentences import SentenceSplitter

    split = SentenceSplitter(**splitter).split
    return [len(split(text)) for text in texts]


@dataclass(frozen=True)
class RayCluster:
    """Where and how wide a job runs; see :func:`score_corpus_on_ray`."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    predictor: type = SentencePredictor

    def __post_init__(self):
        if self.actors is not None and self.actors < 1:
            raise ScoringSetupError(f"actors must be at least 1, not {self.actors}")
        if not self.cpus_per_actor > 0:
            raise ScoringSetupError(f"cpus per actor must be above 0, not {self.cpus_per_actor}")

    def pool_size(self, ray, blocks: int) -> int:
        """The actors asked for, or as many as the cluster's CPUs hold; never more than there are blocks."""
        fit = int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_actor)
        return max(1, min(self.actors or fit, blocks))


def score_corpus_on_ray(paths: list[str | Path], out: str | Path, model, options: ScoreOptions | None = None, *,
                        address: str | None = None, actors: int | None = None, cpus_per_actor: float = 1.0,
                        predictor: type = SentencePredictor, progress: bool = True, log=None,
                        **option_values) -> ScoreSummary:
    """Score every document of ``paths`` into ``out`` on a Ray cluster: the rows of
    :func:`~stanceclf.infer.scoring.score_corpus`, in its order, with its scores.

    ``model`` is a loaded model from a directory; its files are shipped to the workers (which
    need stanceclf installed, not the directory), and its backend runs on every actor.
    ``address``: None (``$RAY_ADDRESS``, else a new local Ray), ``"auto"`` (the cluster this
    machine belongs to), ``"ray://HEAD:10001"`` (Ray Client) or ``"local"``; a process that
    already called ``ray.init`` keeps its connection. ``actors`` (default: the cluster's CPUs
    divided by ``cpus_per_actor``) each reserve ``cpus_per_actor`` CPUs and run as many torch
    threads. ``predictor`` is the class run on each chunk (a :class:`SentencePredictor`).
    Options are those of ``score_corpus``; the job is not resumable (see the module docstring).
    """
    options = score_options(options, option_values)
    run = _RayRun([Path(p) for p in paths], Path(out), model, options, log,
                  RayCluster(address, actors, cpus_per_actor, predictor))
    return run_locked(run, progress)


class _RayRun(ScoringRun):
    def __init__(self, paths: list[Path], out: Path, model, options: ScoreOptions, log, cluster: RayCluster):
        super().__init__(paths, out, model, options, log)
        if model.path is None:
            raise ScoringSetupError("the Ray engine ships the model's directory to its workers, and this model "
                                    "has none: save it first (model.save_pretrained(DIR))")
        self.cluster = cluster
        self.expected = _ExpectedRows(options.per_document)
        self.blocks: list = []

    def execute(self, progress: bool) -> ScoreSummary:
        started = time.time()
        self._start()
        self.writer = make_writer(self.fmt, self.files.partial, self.spec)
        try:
            with ray_connection(self.cluster.address) as ray, _ordered_data(ray):
                try:
                    self._read_into_chunks(ray, progress)
                finally:
                    self.errors.close()
                self.refuse_empty_result(self.writer)
                self._score_chunks(ray, progress)
        except BaseException:
            # Not resumable: a failed run's log would describe no output (an earlier one may stand there). A log
            # published with its output is no longer partial; one of a run that scored nothing is kept.
            if not self.summary.skipped or self.summary.documents:
                self.files.errors_partial.unlink(missing_ok=True)
            raise
        self.summary.seconds = time.time() - started
        return self.summary

    def _start(self) -> None:
        if self.options.overwrite:
            self.clear_previous()
        elif self.files.progress.exists():
            raise ScoringSetupError("an interrupted local run left this progress file: finish it with --engine "
                                    "local (it resumes), or pass --overwrite to score again on Ray",
                                    where=str(self.files.progress))
        else:
            self.refuse_complete_output()
        self.errors = open(self.files.errors_partial, "w", encoding="utf-8")

    def _read_into_chunks(self, ray, progress: bool) -> None:
        """Check every record and cut the good ones into chunks; counting tasks run while reading goes on."""
        count = ray.remote(num_cpus=1)(count_sentences)
        splitter = self.model.manifest.splitter.model_dump()
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        chunks, counting, group = ChunkFiller(self.options.chunk_sentences), deque(), []
        with progress_bar(None, show=progress, desc="reading", unit=" docs") as bar:
            for record in self.records():
                if record.error is not None:
                    self.handle_bad_record(record)
                    continue
                group.append(record)
                bar.update(1)
                if len(group) == COUNT_GROUP:
                    counting.append((count.remote(splitter, [r.text for r in group]), group))
                    group = []
                while len(counting) > window:
                    self._add_counted(ray, *counting.popleft(), chunks)
            if group:
                counting.append((count.remote(splitter, [r.text for r in group]), group))
            while counting:
                self._add_counted(ray, *counting.popleft(), chunks)
        self._store_chunk(ray, chunks.take())

    def _add_counted(self, ray, counts_ref, group: list, chunks: ChunkFiller) -> None:
        for record, sentences in zip(group, ray.get(counts_ref)):
            self.expected.add(record.doc_id, sentences)
            self.summary.documents += 1
            self.summary.sentences += sentences
            chunk = chunks.add(record, sentences)
            if chunk is not None:
                self._store_chunk(ray, chunk)

    def _store_chunk(self, ray, records: list) -> None:
        import pyarrow as pa

        if records:
            self.blocks.append(ray.put(pa.table({"doc_id": [r.doc_id for r in records],
                                                 "text": [r.text for r in records]})))

    def _score_chunks(self, ray, progress: bool) -> None:
        cluster = self.cluster
        constructor = {"model": ray.put(ModelFiles.read(self.model.path)), "backend": self.model.backend,
                       "per_document": self.options.per_document, "batch_size": self.options.batch_size,
                       "max_chars": self.options.max_chars, "with_truncated": True,
                       "threads": max(1, int(cluster.cpus_per_actor))}
        rows = ray.data.from_arrow_refs(self.blocks).map_batches(
            cluster.predictor, fn_constructor_kwargs=constructor, batch_size=None, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cluster.pool_size(ray, len(self.blocks))),
            num_cpus=cluster.cpus_per_actor)
        self.writer.open(None)
        try:
            with progress_bar(self.summary.sentences, show=progress, long_work=0, desc="scoring on ray",
                              unit=" sent") as bar:
                batches = rows.iter_batches(batch_size=None, batch_format="pyarrow")
                for table in _cluster_errors_coded(ray, batches):
                    self._write(table, bar)
            self.expected.finish()
            self.writer.commit()
        except BaseException:  # not resumable: leave nothing half-written
            self.writer.close()
            self.writer.discard()
            raise
        self.writer.close()
        self.writer.finish(self.out)
        self.files.publish_errors(self.summary.skipped > 0)  # at once: Ray's shutdown comes after

    def _write(self, table, bar) -> None:
        rows = table.select(self.spec.columns).to_pylist()
        self.expected.check(rows)
        if rows:
            self.writer.write(rows)
        self.summary.truncated += sum(table.column(TRUNCATED_COLUMN).to_pylist())
        bar.update(sum(row["sentences"] for row in rows) if self.spec.per_document else len(rows))


class _ExpectedRows:
    """The rows the cluster must return, in order: per document its id and sentence count."""

    def __init__(self, per_document: bool):
        self.per_document = per_document
        self.documents: deque[tuple[str, int]] = deque()
        self.next_index = 0

    def add(self, doc_id: str, sentences: int) -> None:
        if sentences or self.per_document:  # a document without sentences has no sentence rows
            self.documents.append((doc_id, sentences))

    def check(self, rows: list[dict]) -> None:
        key = "sentences" if self.per_document else "sentence_index"
        for row in rows:
            if not self.documents:
                self._fail(f"an extra row {row['doc_id']!r}/{row[key]}")
            doc_id, sentences = self.documents[0]
            expected = (doc_id, sentences if self.per_document else self.next_index)
            if (row["doc_id"], row[key]) != expected:
                self._fail(f"expected {key} {expected[1]} of {doc_id!r}, got {row[key]} of {row['doc_id']!r}")
            self.next_index += 1
            if self.per_document or self.next_index == sentences:
                self.documents.popleft()
                self.next_index = 0

    def finish(self) -> None:
        if self.documents:
            self._fail(f"no rows for {self.documents[0][0]!r} and {len(self.documents) - 1} documents after it")

    @staticmethod
    def _fail(what: str):
        raise RayEngineError(f"the cluster's rows do not add up ({what}); nothing was written under the final "
                             "name. Every node must run this machine's stanceclf and sentence splitter versions.")


def _cluster_errors_coded(ray, batches):
    """A failure on the cluster (a worker's exception, a lost node) as a coded error; Ray's message keeps
    the worker's traceback, coded errors raised there included."""
    try:
        yield from batches
    except ray.exceptions.RayError as exc:
        raise RayEngineError(f"the cluster failed: {exc}") from exc


@contextmanager
def ray_connection(address: str | None) -> Iterator[ModuleType]:
    """Ray, connected to ``address``; a connection made here is closed (and a Ray started here stopped) on exit."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    # A new local Ray turns token authentication on by itself and says so on every run: right for a cluster
    # started here, and nothing for the user to do.
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notices.level
    notices.setLevel(logging.ERROR)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise RayEngineError(f"cannot connect to Ray at {address or 'the default address'}: {exc}. Check the address "
                             "and that the cluster is up; a cluster with token authentication also needs "
                             "RAY_AUTH_MODE=token here and its token (~/.ray/auth_token or $RAY_AUTH_TOKEN), and "
                             "ray:// addresses need pip install 'ray[client]'") from None
    finally:
        notices.setLevel(level)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _ordered_data(ray):
    """Ray Data returns blocks in input order (the output follows the inputs), and shows no progress bars or
    notes of its own beside the job's (its warnings and errors still show)."""
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order, context.enable_progress_bars = True, False
    loggers = {name: logging.getLogger(name) for name in ("ray.data", "ray.data._internal.progress")}
    levels = {name: logger.level for name, logger in loggers.items()}
    loggers["ray.data"].setLevel(logging.WARNING)
    loggers["ray.data._internal.progress"].setLevel(logging.ERROR)  # "progress bars disabled": ours show
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        for name, logger in loggers.items():
            logger.setLevel(levels[name])
