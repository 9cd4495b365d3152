"""The scoring job: stream documents in, sentence (or document) rows out, resumably.

Memory stays bounded whatever the corpus size: inputs are read record by record,
documents are scored in chunks of about ``chunk_sentences`` sentences, and each chunk's
rows are appended to the output. After every chunk a :class:`~.state.ResumeState` records
how many input records are done and how long the output is; an interrupted run (Ctrl-C or
kill -9) started again with the same command cuts the output back to the last recorded
length and goes on from there, so no row is lost or written twice. The output carries its
final name only once the run is complete, and a lock keeps a second run off it meanwhile.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from stanceclf.data.language import warn_if_not_english
from stanceclf.errors import InputRecordError, ScoringSetupError, StanceclfError
from stanceclf.infer.results import RowSpec
from stanceclf.infer.scoring.inputs import Fields, InputRecord, check_inputs, input_files, iter_records
from stanceclf.infer.scoring.outputs import make_writer, output_format_of
from stanceclf.infer.scoring.state import OutputLock, OutputPaths, ResumeState, RunCounts, run_signature


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
        """The options a resumed run must share with the interrupted one."""
        return {"input_format": self.input_format, "id_field": self.id_field, "text_field": self.text_field,
                "fmt": output_format, "per_document": self.per_document, "chunk_sentences": self.chunk_sentences}


#: The one home of the scoring defaults, which the CLI verbs, suggest() and the Ray engine read.
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
    with OutputLock(run.files.lock) as lock:
        try:
            return run.execute(progress)
        finally:
            lock.release(remove=True)


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


class ScoringRun:
    """What every engine's run shares: the checks made before anything is written, the records
    with the duplicate-id rule, the bad-record rule, the error log and the refusal of an empty
    result. Engines add ``execute(progress) -> ScoreSummary``."""

    def __init__(self, paths: list[Path], out: Path, model, options: ScoreOptions, log=None):
        check_inputs(paths, options.input_format)
        if not out.parent.is_dir():
            raise ScoringSetupError("the output's folder does not exist", where=str(out.parent))
        self.paths, self.out, self.model, self.options = paths, out, model, options
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.fmt = output_format_of(out, options.output_format)
        self.files = OutputPaths.beside(out)
        self.spec = RowSpec(tuple(model.labels), per_document=options.per_document)
        self.summary = ScoreSummary()

    def execute(self, progress: bool) -> ScoreSummary:
        raise NotImplementedError

    def records(self) -> Iterator[InputRecord]:
        """Every input record in order, a repeated id turned into a bad record (ids are unique across the run)."""
        ids = DuplicateIds()
        fields = Fields(self.options.id_field, self.options.text_field)
        for record in iter_records(self.paths, self.options.input_format, fields=fields,
                                   max_chars=self.options.max_chars):
            yield ids.check(record)

    def clear_previous(self) -> None:
        """``overwrite``: remove the output and whatever an earlier run left beside it."""
        for stale in (self.out, self.files.progress, self.files.errors):
            stale.unlink(missing_ok=True)
        make_writer(self.fmt, self.files.partial, self.spec).discard()

    def refuse_complete_output(self) -> None:
        if self.out.exists():
            raise StanceclfError("the output exists and is complete; pass --overwrite to score again",
                                 where=str(self.out))

    def handle_bad_record(self, record: InputRecord) -> None:
        """Stop with the record's name (``on_error="stop"``), or log it to OUT.errors.jsonl and count it."""
        where = f"record {record.number} ({record.where}, id {record.doc_id!r})"
        if self.options.on_error == "stop":
            raise InputRecordError(record.error + "; pass --on-error skip to log it and go on", where=where)
        self.errors.write(json.dumps({"record": record.number, "where": record.where, "doc_id": record.doc_id,
                                      "error": record.error}, ensure_ascii=False) + "\n")
        self.summary.skipped += 1
        self.log(f"skipped {where}: {record.error}")

    def refuse_empty_result(self, writer) -> None:
        """A run that scored nothing is an error, even when every record was skipped on purpose."""
        if self.summary.documents:
            return
        writer.discard()
        self.files.progress.unlink(missing_ok=True)
        if not self.summary.skipped:
            self.files.errors.unlink(missing_ok=True)
        what = (f"all {self.summary.skipped} records were skipped as bad (listed in {self.files.errors.name})"
                if self.summary.skipped else "the inputs hold no records")
        raise InputRecordError(f"nothing was scored, so no output was written: {what}", where=str(self.out))


class _LocalRun(ScoringRun):
    """The local engine: chunks scored in this process, a resume state after each one."""

    def __init__(self, paths: list[Path], out: Path, model, options: ScoreOptions, log=None):
        super().__init__(paths, out, model, options, log)
        self.signature = run_signature(input_files(paths, options.input_format), model, options.shaping(self.fmt))

    def execute(self, progress: bool) -> ScoreSummary:
        state = self._starting_state()
        if state is None:  # an interrupted run had already finished
            return self.summary
        self.writer = make_writer(self.fmt, self.files.partial, self.spec)
        self.writer.open(state.output_length if self.resuming else None)
        self.state = state
        started = time.time()
        self._score_all(progress)
        self.refuse_empty_result(self.writer)
        self.writer.finish(self.out)
        self.files.progress.unlink()
        if self.state.errors_written == 0:
            self.files.errors.unlink(missing_ok=True)
        self.summary.seconds = time.time() - started
        return self.summary

    def _starting_state(self) -> ResumeState | None:
        """A fresh state, or the interrupted run's (None when that run had already finished)."""
        files = self.files
        self.resuming = False
        if self.options.overwrite:
            self.clear_previous()
        elif files.progress.exists():
            state = ResumeState.load(files.progress)
            if state.signature != self.signature:
                raise StanceclfError("an interrupted run with other inputs, model or output options left this "
                                     "progress file; rerun the same command, or pass --overwrite to start again",
                                     where=str(files.progress))
            self.summary = _summary_of(state)
            if self.out.exists() and not files.partial.exists():
                # Killed after the output took its final name, before the progress file went.
                files.progress.unlink()
                self.log("the interrupted run had already finished its output; nothing left to do")
                return None
            _keep_lines(files.errors, state.errors_written)
            self.resuming = True
            self.log(f"resuming after {state.records_done} records ({state.sentences} sentences already written)")
            self.errors = open(files.errors, "a", encoding="utf-8")
            return state
        else:
            self.refuse_complete_output()
        # A fresh run starts a fresh error log: lines from a run killed before its first checkpoint are redone.
        self.errors = open(files.errors, "w", encoding="utf-8")
        return ResumeState(signature=self.signature)

    def _score_all(self, progress: bool) -> None:
        from tqdm import tqdm

        from stanceclf.progress import wants_progress

        # A bar redrawn with carriage returns is noise in a log file: on a terminal only.
        self.bar = tqdm(total=None, unit=" sent", disable=not (progress and wants_progress()), dynamic_ncols=True,
                        desc="scoring", file=sys.stderr)
        try:
            self.chunks, seen = ChunkFiller(self.options.chunk_sentences), self.state.records_done
            for record in self.records():  # records already done count too: ids are unique across the run
                if record.number < self.state.records_done:
                    continue
                seen = record.number + 1
                if record.error is not None:
                    self._bad_record(record)
                    continue
                warn_if_not_english(record.text, f"document {record.doc_id!r} ({record.where})")
                sentences = self.model.split(record.text)
                chunk = self.chunks.add((record, sentences), len(sentences))
                if chunk is not None:
                    self._flush(chunk, record.number + 1)
            # The last (possibly empty) chunk also records the final state, skipped trailing records included.
            self._flush(self.chunks.take(), seen)
        finally:
            self.bar.close()
            self.writer.close()
            self.errors.close()

    def _bad_record(self, record: InputRecord) -> None:
        if self.options.on_error == "stop":
            chunk = self.chunks.take()
            if chunk:  # what came before the bad record is kept, for a resumed run
                self._flush(chunk, record.number)
        self.handle_bad_record(record)
        self.state.errors_written += 1
        self.state.skipped += 1

    def _flush(self, chunk: list[tuple[InputRecord, list]], records_done: int) -> None:
        """Score a chunk, append its rows, and record the new state durably (output first, then state)."""
        texts = [s.text for _, sentences in chunk for s in sentences]
        probs, truncated = self.model.proba_and_truncation(texts, batch_size=self.options.batch_size)
        predictions = self.model.predictions([(s.start, s.end, s.text) for _, ss in chunk for s in ss],
                                             probs, truncated)
        rows, cursor = [], 0
        for record, sentences in chunk:
            rows.extend(self.spec.rows(record.doc_id, predictions[cursor: cursor + len(sentences)]))
            cursor += len(sentences)
        if rows:
            self.writer.write(rows)
        state = self.state
        state.documents += len(chunk)
        state.sentences += len(texts)
        state.truncated += sum(truncated)
        state.records_done = records_done
        self.errors.flush()
        state.output_length = self.writer.commit()
        state.save(self.files.progress)
        self.summary = _summary_of(state, self.summary)
        self.bar.update(len(texts))
        self.bar.set_postfix(docs=state.documents, skipped=state.skipped)


class DuplicateIds:
    """Two records with one id would give two rows with one (doc_id, sentence_index) key: a bad record."""

    def __init__(self):
        self.first: dict[str, str] = {}

    def check(self, record: InputRecord) -> InputRecord:
        if record.doc_id in self.first:
            record.error = (f"duplicate document id {record.doc_id!r} (first at {self.first[record.doc_id]}); "
                            "ids must be unique (use --id-field to name a unique field)")
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
