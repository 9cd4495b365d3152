"""The scoring job: stream documents in, sentence (or document) rows out, resumably.

Memory stays bounded whatever the corpus size: inputs are read record by record,
documents are scored in chunks of about ``chunk_sentences`` sentences, and each chunk's
rows are appended to the output. After every chunk a :class:`~.state.ResumeState` records
how many input records are done and how long the output is; an interrupted run (Ctrl-C or
kill -9) started again with the same command cuts the output back to the last recorded
length and goes on from there, so no row is lost or written twice. The output carries its
final name only once the run is complete, and a lock keeps a second run off it meanwhile.

A corpus is read one way (:class:`CorpusReader`: record order, unique ids, the bad-record
rule, chunks), whoever reads it: ``score``, ``suggest`` (:mod:`stanceclf.infer.suggest`, a
:class:`ResumableRun` too) and distillation's unlabelled pool.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from stanceclf.data.corpus_inputs import Fields, InputRecord, check_inputs, input_files, iter_records
from stanceclf.data.language import warn_if_not_english
from stanceclf.errors import InputRecordError, ScoringSetupError, StanceclfError
from stanceclf.infer.results import RowSpec
from stanceclf.infer.scoring.outputs import make_writer, output_format_of
from stanceclf.infer.scoring.state import OutputPaths, ResumeState, RunCounts, RunSignature


class ScoreOptions(BaseModel):
    """How to read the corpus and shape the output. Only ``input_format``, the fields,
    ``per_document``, the output format and ``chunk_sentences`` shape the rows; the others
    may change between an interrupted run and its resumption."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_format: Literal["auto", "txt", "jsonl", "csv", "parquet"] = "auto"
    output_format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    id_field: str | None = None
    text_field: str = "text"
    per_document: bool = False
    on_error: Literal["stop", "skip"] = "stop"
    max_chars: int = Field(default=1_000_000, ge=1)
    chunk_sentences: int = Field(default=1024, ge=1)
    batch_size: int = Field(default=64, ge=1)
    overwrite: bool = False

    def shaping(self, output_format: str) -> dict:
        """The options a resumed run must share with the interrupted one, by their CLI names."""
        return {"input_format": self.input_format, "id_field": self.id_field, "text_field": self.text_field,
                "output_format": output_format, "per_document": self.per_document,
                "chunk_sentences": self.chunk_sentences}


#: The one home of the scoring defaults, which the CLI verbs, suggest(), distillation and the Ray engine read.
SCORE_DEFAULTS = ScoreOptions()


@dataclass
class ScoreSummary(RunCounts):
    seconds: float = 0.0
    resumed_from: int = 0
    #: Sentences an interrupted run had already written (not scored by this run).
    resumed_sentences: int = 0


def score_corpus(paths: list[str | Path], out: str | Path, model, options: ScoreOptions | None = None, *,
                 progress: bool = True, log=None, **option_values) -> ScoreSummary:
    """Score every document of ``paths`` into ``out``; see the module docstring for resumption.

    Options are a :class:`ScoreOptions` or its fields as keywords (``per_document=True``).
    """
    options = score_options(options, option_values)
    return run_locked(_LocalRun([Path(p) for p in paths], Path(out), model, options, log), progress)


def score_options(options: ScoreOptions | None, option_values: dict) -> ScoreOptions:
    """The options of a run: given whole, or as keywords checked into a :class:`ScoreOptions`."""
    from pydantic import ValidationError

    from stanceclf.errors import describe_validation_error

    try:
        return options or ScoreOptions(**option_values)
    except ValidationError as exc:
        raise ScoringSetupError(describe_validation_error(exc)) from None


def run_locked(run: "ScoringRun", progress: bool) -> ScoreSummary:
    """Execute a run while holding its output's lock, so that no second run writes the same output."""
    with run.files.locked():
        return run.execute(progress)


class ChunkFiller:
    """The one chunking rule of every engine: documents join a chunk until it holds at least
    ``limit`` sentences. Forward-pass batches are formed within a chunk (length-sorted), and
    batch composition moves scores in the last float bits, so engines that chunk alike give
    identical scores."""

    def __init__(self, limit: int):
        self.limit = limit
        self.items: list = []
        self.sentences = 0

    def add(self, item, sentences: int) -> list | None:
        """Add one document; the chunk it completes, or None."""
        self.items.append(item)
        self.sentences += sentences
        return self.take() if self.sentences >= self.limit else None

    def take(self) -> list:
        """The documents gathered so far (possibly none), starting a new chunk."""
        items, self.items, self.sentences = self.items, [], 0
        return items


@dataclass
class Chunk:
    """Documents processed together, each with its sentences, and how many input records are
    finished once they are (bad and passed-over records included)."""

    documents: list[tuple[InputRecord, list]]
    records_done: int

    @property
    def sentences(self) -> list:
        return [sentence for _, sentences in self.documents for sentence in sentences]

    def units(self, model) -> list:
        """The chunk's sentences as :meth:`~stanceclf.infer.model.StanceModel.classify` would read them: each
        with the context ``model`` reads from its own document, numbered by document within the chunk."""
        return [unit for index, (_, sentences) in enumerate(self.documents)
                for unit in model.document_units(index, sentences)]

    def by_document(self, values: list) -> Iterator[tuple[InputRecord, list]]:
        """Each document with its share of ``values``, one value per sentence of the chunk in order."""
        cursor = 0
        for record, sentences in self.documents:
            yield record, values[cursor: cursor + len(sentences)]
            cursor += len(sentences)


class CorpusReader:
    """The one way a corpus is read: records in one fixed order, ids unique across the run (with
    ``unique_ids``), the bad-record rule, and the good documents split into sentences and cut into
    chunks of about ``options.chunk_sentences`` sentences (:class:`ChunkFiller`)."""

    def __init__(self, paths: list[Path], options: ScoreOptions, log=None, *, unique_ids: bool = True,
                 skip_advice: str = "pass --on-error skip to log it and go on"):
        check_inputs(paths, options.input_format)
        self.paths, self.options = paths, options
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.unique_ids = unique_ids
        #: How to go past a bad record instead of stopping, as the error says it (a CLI flag, a recipe key).
        self.skip_advice = skip_advice
        self.skipped = 0

    def records(self) -> Iterator[InputRecord]:
        """Every input record in order, a repeated id turned into a bad record with ``unique_ids``."""
        ids = DuplicateIds()
        fields = Fields(self.options.id_field, self.options.text_field)
        for record in iter_records(self.paths, self.options.input_format, fields=fields,
                                   max_chars=self.options.max_chars):
            yield ids.check(record) if self.unique_ids else record

    def chunks(self, split: Callable[[str], list], *, start: int = 0) -> Iterator[Chunk]:
        """The good documents from record number ``start`` on, split by ``split``, in chunks; the last
        chunk (possibly empty) finishes every record read. A bad record goes to :meth:`handle_bad_record`
        after the chunk before it, so that when it stops the run, what came before is kept."""
        filler, done = ChunkFiller(self.options.chunk_sentences), start
        for record in self.records():  # records before start count too: ids are unique across the run
            if record.number < start:
                continue
            done = record.number + 1
            if record.error is not None:
                if self.options.on_error == "stop" and filler.items:
                    yield Chunk(filler.take(), record.number)
                self.handle_bad_record(record)
            elif not self.passes_over(record):
                warn_if_not_english(record.text, f"document {record.doc_id!r} ({record.where})")
                sentences = split(record.text)
                documents = filler.add((record, sentences), len(sentences))
                if documents is not None:
                    yield Chunk(documents, done)
        yield Chunk(filler.take(), done)

    def passes_over(self, record: InputRecord) -> bool:
        """Whether a good record is left out on purpose (``suggest``: a document already annotated)."""
        return False

    def handle_bad_record(self, record: InputRecord) -> None:
        """Stop with the record's name (``on_error="stop"``), or log it and count it."""
        where = f"record {record.number} ({record.where}, id {record.doc_id!r})"
        if self.options.on_error == "stop":
            raise InputRecordError(f"{record.error}; {self.skip_advice}", where=where)
        self.count_skipped(record, where)

    def count_skipped(self, record: InputRecord, where: str) -> None:
        self.skipped += 1
        self.log(f"skipped {where}: {record.error}")


class ScoringRun(CorpusReader):
    """What every engine's run shares: the checks made before anything is written, the corpus read
    as :class:`CorpusReader` reads it (bad records logged to OUT.errors.jsonl) and the refusal of an
    empty result. Engines add ``execute(progress)``."""

    def __init__(self, paths: list[Path], out: Path, model, options: ScoreOptions, log=None):
        super().__init__(paths, options, log)
        if not out.parent.is_dir():
            raise ScoringSetupError("the output's folder does not exist", where=str(out.parent))
        self.out, self.model = out, model
        self.fmt = output_format_of(out, options.output_format)
        self.files = OutputPaths.beside(out)
        self.spec = RowSpec(tuple(model.labels), per_document=options.per_document)
        self.summary = ScoreSummary()

    def execute(self, progress: bool) -> ScoreSummary:
        raise NotImplementedError

    def clear_previous(self) -> None:
        """``overwrite``: remove what an interrupted earlier run left beside the output. The output and its
        error log stay until this run's replace them: a failed ``--overwrite`` run loses no earlier result."""
        for stale in (self.files.progress, self.files.errors_partial):
            stale.unlink(missing_ok=True)
        make_writer(self.fmt, self.files.partial, self.spec).discard()

    def refuse_complete_output(self) -> None:
        if self.out.exists():
            raise StanceclfError("the output exists and is complete; pass --overwrite to score again",
                                 where=str(self.out))

    def count_skipped(self, record: InputRecord, where: str) -> None:
        self.errors.write(json.dumps({"record": record.number, "where": record.where, "doc_id": record.doc_id,
                                      "error": record.error}, ensure_ascii=False) + "\n")
        self.summary.skipped += 1
        super().count_skipped(record, where)

    def refuse_empty_result(self, writer) -> None:
        """A run that scored nothing is an error, even when every record was skipped on purpose."""
        if self.summary.documents:
            return
        writer.discard()
        self.files.progress.unlink(missing_ok=True)
        log = self.files.errors_partial
        if not self.summary.skipped:
            log.unlink(missing_ok=True)
        elif not self.out.exists():  # an earlier output (--overwrite) keeps its own log; the new one stays partial
            log = log.replace(self.files.errors)
        raise InputRecordError(f"nothing was scored, so no output was written: {self.why_empty(log)}",
                               where=str(self.out))

    def why_empty(self, log: Path) -> str:
        return (f"all {self.summary.skipped} records were skipped as bad (listed in {log.name})"
                if self.summary.skipped else "the inputs hold no records")


class ResumableRun(ScoringRun):
    """A run in this process that an interruption does not lose: each chunk's rows
    (:meth:`process_chunk`) are appended to OUT.partial, then a :class:`ResumeState` records how far
    it got; the same command started again goes on from there (see the module docstring).
    ``score`` is one, ``suggest`` another."""

    state_type = ResumeState
    #: What the progress bar says the run is doing.
    activity = "scoring"

    def shaping(self) -> dict:
        """The options a resumed run must share with the interrupted one."""
        return self.options.shaping(self.fmt)

    def process_chunk(self, chunk: Chunk) -> tuple[list[dict], int]:
        """The rows of a chunk's documents, and how many of its sentences were truncated."""
        raise NotImplementedError

    def finished_before(self, state: ResumeState) -> bool:
        """Whether the interrupted run was killed after giving the output its final name. (Where the user deleted
        ``OUT.partial`` by hand while a Parquet output was being merged, an earlier output can still pass.)"""
        return state.finishing is not False and self.out.exists() and not self.files.partial.exists()

    def mark_finishing(self) -> None:
        """Record, before anything takes its final name, that the run got to its end."""
        self.state.finishing = True
        self.state.save(self.files.progress)

    def complete(self) -> None:
        """Give the output, then its error log, their final names; then drop the resume state."""
        self.mark_finishing()
        self.writer.finish(self.out)
        self.files.publish_errors(self.state.errors_written > 0)
        self.files.progress.unlink()

    def execute(self, progress: bool) -> ScoreSummary:
        state = self._starting_state()
        if state is None:  # an interrupted run had already finished
            return self.summary
        self.writer = make_writer(self.fmt, self.files.partial, self.spec)
        self.writer.open(state.output_length if self.resuming else None)
        self.state = state
        started = time.time()
        self._process_all(progress)
        self.refuse_empty_result(self.writer)
        self.complete()
        self.summary.seconds = time.time() - started
        return self.summary

    def _starting_state(self) -> ResumeState | None:
        """A fresh state, or the interrupted run's (None when that run had already finished)."""
        files = self.files
        self.resuming = False
        signature = RunSignature.of(input_files(self.paths, self.options.input_format), self.model, self.shaping())
        if self.options.overwrite:
            self.clear_previous()
        elif files.progress.exists():
            state = self.state_type.load(files.progress)
            signature.refuse_other(state.signature, files.progress)
            self.summary = _summary_of(state)
            if self.finished_before(state):
                # Killed after the output took its final name, before the progress file went.
                files.publish_errors(state.errors_written > 0)
                files.progress.unlink()
                self.log("the interrupted run had already finished its output; nothing left to do")
                return None
            if (state.finishing is not False and state.errors_written and not files.errors_partial.exists()
                    and files.errors.exists()):
                # Killed after its error log took the final name (or left by an earlier stanceclf, which wrote
                # it there): the log goes on as the run does.
                files.errors.replace(files.errors_partial)
            _keep_lines(files.errors_partial, state.errors_written)
            self.resuming = True
            self.log(f"resuming after {state.records_done} records ({state.sentences} sentences already done)")
            self.errors = open(files.errors_partial, "a", encoding="utf-8")
            return state
        else:
            self.refuse_complete_output()
        # A fresh run starts a fresh error log: lines from a run killed before its first checkpoint are redone.
        self.errors = open(files.errors_partial, "w", encoding="utf-8")
        return self.state_type(signature=signature.as_dict())

    def _process_all(self, progress: bool) -> None:
        from stanceclf.progress import progress_bar

        # A bar on a terminal, a line a minute in a log file (resumed runs count on from their state).
        self.bar = progress_bar(None, show=progress, unit=" sent", desc=self.activity, initial=self.state.sentences)
        try:
            for chunk in self.chunks(self.model.split, start=self.state.records_done):
                self._flush(chunk)
        finally:
            self.bar.close()
            self.writer.close()
            self.errors.close()

    def count_skipped(self, record: InputRecord, where: str) -> None:
        super().count_skipped(record, where)
        self.state.errors_written += 1
        self.state.skipped += 1

    def _flush(self, chunk: Chunk) -> None:
        """Process a chunk, append its rows, and record the new state durably (output first, then state)."""
        rows, truncated = self.process_chunk(chunk) if chunk.documents else ([], 0)
        if rows:
            self.writer.write(rows)
        state, sentences = self.state, len(chunk.sentences)
        state.documents += len(chunk.documents)
        state.sentences += sentences
        state.truncated += truncated
        state.records_done = chunk.records_done
        self.errors.flush()
        state.output_length = self.writer.commit()
        state.save(self.files.progress)
        self.summary = _summary_of(state, self.summary)
        self.bar.set_postfix(docs=state.documents, skipped=state.skipped, refresh=False)
        self.bar.update(sentences)


class _LocalRun(ResumableRun):
    """The local engine: chunks scored in this process, a resume state after each one."""

    def process_chunk(self, chunk: Chunk) -> tuple[list[dict], int]:
        units = chunk.units(self.model)
        probs, truncated = self.model.score_units(units, batch_size=self.options.batch_size)
        predictions = self.model.unit_predictions(units, probs, truncated)
        rows = [row for record, predicted in chunk.by_document(predictions)
                for row in self.spec.rows(record.doc_id, predicted)]
        return rows, sum(truncated)


class DuplicateIds:
    """Two records with one id would give two rows with one (doc_id, sentence_index) key: a bad record."""

    def __init__(self):
        self.first: dict[str, str] = {}

    def check(self, record: InputRecord) -> InputRecord:
        if record.doc_id in self.first:
            record.error = (f"duplicate document id {record.doc_id!r} (first at {self.first[record.doc_id]}); "
                            "ids must be unique across the inputs (a text file's id is its path below the folder "
                            "given; for JSONL, CSV or Parquet, --id-field names another field)")
            record.text = None
        else:
            self.first[record.doc_id] = record.where
        return record


def _summary_of(state: ResumeState, previous: ScoreSummary | None = None) -> ScoreSummary:
    summary = previous or ScoreSummary(resumed_from=state.records_done, resumed_sentences=state.sentences)
    for name in RunCounts.__dataclass_fields__:
        setattr(summary, name, getattr(state, name))
    return summary


def _keep_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` lines of the error log (rows past the last checkpoint are redone)."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        lines = handle.readlines()[:keep]
    with open(path, "wb") as handle:
        handle.writelines(lines)
