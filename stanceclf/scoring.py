"""Scoring corpora: stream documents in, sentence (or document) rows out.

Memory stays bounded whatever the corpus size: inputs are read record by
record, documents are scored in chunks of about ``chunk_sentences``
sentences, and each chunk's rows are appended to the output. After every
chunk a small progress file records how many input records are done and how
long the output is; an interrupted run (Ctrl-C or kill -9) started again with
the same command cuts the output back to the last recorded length and goes
on from there, so no row is lost or written twice. The output carries its
final name only once the run is complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from .documents import unicode_problem
from .errors import InputRecordError, ScoringSetupError, StanceclfError

InputFormat = Literal["auto", "txt", "jsonl", "csv", "parquet"]
OutputFormat = Literal["auto", "jsonl", "csv", "parquet"]
PROGRESS_SUFFIX = ".progress.json"
PARTIAL_SUFFIX = ".partial"


@dataclass
class InputRecord:
    """One input document, or the reason it cannot be scored (``error``)."""

    number: int
    doc_id: str
    text: str | None
    where: str
    error: str | None = None


# ---- reading ------------------------------------------------------------------------------------
def detect_input_format(path: Path) -> str:
    if path.is_dir():
        return "txt"
    suffix = path.suffix.lower()
    formats = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".txt": "txt"}
    if suffix not in formats:
        raise ScoringSetupError(f"cannot tell the input format from {suffix!r}; pass --input-format",
                                where=str(path))
    return formats[suffix]


def iter_records(paths: list[Path], fmt: str = "auto", *, id_field: str | None = None, text_field: str = "text",
                 max_chars: int = 1_000_000) -> Iterator[InputRecord]:
    """Yield every input record in a fixed order, numbered from 0 across all inputs."""
    number = 0
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise StanceclfError("input not found", where=str(path))
        kind = detect_input_format(path) if fmt == "auto" else fmt
        reader = {"txt": _iter_txt, "jsonl": _iter_jsonl, "csv": _iter_csv, "parquet": _iter_parquet}[kind]
        for doc_id, text, where, error in reader(path, id_field, text_field):
            if error is None:
                error = _text_problem(text, max_chars)
            yield InputRecord(number, doc_id, text if error is None else None, where, error)
            number += 1


def _text_problem(text, max_chars: int) -> str | None:
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not a string"
    if not text.strip():
        return "text is empty or whitespace only"
    if unicode_problem(text):
        return f"text is {unicode_problem(text)}"
    if len(text) > max_chars:
        return f"text has {len(text):,} characters, above the limit of {max_chars:,} (raise --max-chars to score it)"
    return None


def _decode(raw: bytes) -> tuple[str | None, str | None]:
    """UTF-8 bytes to text; a leading byte-order mark is not part of the text."""
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8: {exc.reason} at byte {exc.start}"


def _iter_txt(path: Path, id_field: str, text_field: str):
    files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
    base = path if path.is_dir() else path.parent
    for file in files:
        text, error = _decode(file.read_bytes())
        yield file.relative_to(base).with_suffix("").as_posix(), text, str(file), error


def _iter_jsonl(path: Path, id_field: str, text_field: str):
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            where = f"{path}:{line_number}"
            line, error = _decode(raw)
            if error is None and not line.strip():
                error = "empty line"
            record = None
            if error is None:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    error = f"not valid JSON: {exc.msg}"
            if error is None and not isinstance(record, dict):
                error = "a record must be a JSON object"
            if error is not None:
                yield _salvage_id(raw, id_field) or f"{path.stem}:{line_number}", None, where, error
                continue
            yield _pick(record, id_field, text_field, f"{path.stem}:{line_number}", where)


def _salvage_id(raw: bytes, id_field: str) -> str | None:
    """The id of a record whose text is unusable, so that the error message can name it."""
    try:
        record = json.loads(raw.decode("utf-8", errors="replace"))
        value = record.get(id_field or "id") if isinstance(record, dict) else None
        return None if value is None else str(value)
    except (json.JSONDecodeError, AttributeError):
        return None


def _pick(record: dict, id_field: str | None, text_field: str, fallback_id: str, where: str):
    """``(doc_id, text, where, error)``. Without an explicit ``id_field``, a record without
    ``id`` is named FILE:LINE; with one, a record that lacks it is a bad record."""
    doc_id = record.get(id_field or "id")
    if doc_id is None and id_field is not None:
        return fallback_id, None, where, f"missing id field {id_field!r} (fields: {sorted(record)[:10]})"
    doc_id = fallback_id if doc_id is None else str(doc_id)
    if text_field not in record:
        return doc_id, None, where, f"missing field {text_field!r} (fields: {sorted(record)[:10]})"
    return doc_id, record[text_field], where, None


def _iter_csv(path: Path, id_field: str, text_field: str):
    csv.field_size_limit(sys.maxsize)
    # Bad bytes become lone surrogates here and are reported per row instead of failing the file.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        for row_number, row in enumerate(reader, 2):  # row 1 is the header
            where = f"{path}:row {row_number}"
            fallback = f"{path.stem}:{row_number}"
            value = row.get(text_field)
            if isinstance(value, str) and unicode_problem(value):
                yield row.get(id_field or "id") or fallback, None, where, "not valid UTF-8"
                continue
            yield _pick(row, id_field, text_field, fallback, where)


def _iter_parquet(path: Path, id_field: str, text_field: str):
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    columns = [c for c in (id_field or "id", text_field) if c in table.schema_arrow.names]
    row_number = 0
    for batch in table.iter_batches(batch_size=1024, columns=columns or None):
        for record in batch.to_pylist():
            yield _pick(record, id_field, text_field, f"{path.stem}:{row_number}", f"{path}:row {row_number}")
            row_number += 1


# ---- writing ------------------------------------------------------------------------------------
class _Writer:
    """Appends rows to the partial output and reports its committed length."""

    def __init__(self, path: Path, fmt: str, columns: list[str]):
        self.path, self.fmt, self.columns = path, fmt, columns

    @property
    def arrow_schema(self):
        """One fixed schema for every part: a chunk with no labels must not type ``labels`` as list<null>."""
        import pyarrow as pa

        def kind(column: str):
            if column in ("doc_id", "text"):
                return pa.string()
            if column == "labels":
                return pa.list_(pa.string())
            if column.startswith(("score_", "share_")):
                return pa.float64()
            return pa.int64()

        return pa.schema([(column, kind(column)) for column in self.columns])

    def open(self, resume_length: int | None) -> None:
        if self.fmt == "parquet":
            self.path.mkdir(parents=True, exist_ok=True)
            if resume_length is not None:
                for part in self.path.glob("part-*.parquet"):
                    if int(part.stem.split("-")[1]) >= resume_length:
                        part.unlink()
            for tmp in self.path.glob("*.tmp"):
                tmp.unlink()
            self.parts = resume_length or 0
            return
        mode = "r+b" if resume_length is not None else "wb"
        if resume_length is not None and not self.path.exists():
            raise StanceclfError("the progress file names a partial output that is gone; start again with "
                                 "--overwrite", where=str(self.path))
        self.handle = open(self.path, mode)
        if resume_length is not None:
            self.handle.truncate(resume_length)
            self.handle.seek(resume_length)
        elif self.fmt == "csv":
            self._write_csv([dict(zip(self.columns, self.columns))])

    def write(self, rows: list[dict]) -> None:
        if self.fmt == "jsonl":
            self.handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
        elif self.fmt == "csv":
            self._write_csv(rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            target = self.path / f"part-{self.parts:08d}.parquet"
            tmp = target.with_suffix(".tmp")
            pq.write_table(pa.Table.from_pylist(rows, schema=self.arrow_schema), tmp)
            os.replace(tmp, target)
            self.parts += 1

    def _write_csv(self, rows: list[dict]) -> None:
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        for row in rows:
            writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()})
        self.handle.write(buffer.getvalue().encode("utf-8"))

    def commit(self) -> int:
        """Make written rows durable; returns the length to resume from."""
        if self.fmt == "parquet":
            return self.parts
        self.handle.flush()
        os.fsync(self.handle.fileno())
        return self.handle.tell()

    def close(self) -> None:
        if self.fmt != "parquet":
            self.handle.close()

    def finish(self, final: Path) -> None:
        if self.fmt != "parquet":
            os.replace(self.path, final)
            return
        import pyarrow.parquet as pq

        parts = sorted(self.path.glob("part-*.parquet"))
        tmp = final.with_name(final.name + ".tmp")
        schema = self.arrow_schema
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:  # one part in memory at a time
                writer.write_table(pq.read_table(part, schema=schema))
        os.replace(tmp, final)
        for part in parts:
            part.unlink()
        self.path.rmdir()


# ---- the scoring job ----------------------------------------------------------------------------
@dataclass
class ScoreSummary:
    documents: int = 0
    sentences: int = 0
    skipped: int = 0
    truncated: int = 0
    seconds: float = 0.0
    resumed_from: int = 0
    #: Sentences an interrupted run had already written (not scored by this run).
    resumed_sentences: int = 0


def _signature(paths, model, options: dict) -> str:
    """What a resumed run must share with the interrupted one: the input files it reads,
    the model (weights, manifest, backend) and the options that shape the output."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        # Only the files the reader consumes: an output written inside an input folder must not count.
        files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(f"backend:{getattr(model, 'backend', 'torch')}".encode())
    digest.update(model.manifest.model_dump_json().encode())
    weights = model.path / "model.safetensors" if model.path else None
    if weights is not None and weights.exists():
        with open(weights, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()


def score_corpus(paths: list[str | Path], out: str | Path, model, *, input_format: InputFormat = "auto",
                 output_format: OutputFormat = "auto", id_field: str | None = None, text_field: str = "text",
                 per_document: bool = False, on_error: Literal["stop", "skip"] = "stop",
                 max_chars: int = 1_000_000, chunk_sentences: int = 1024, batch_size: int = 64,
                 overwrite: bool = False, progress: bool = True, log=None) -> ScoreSummary:
    """Score every document of ``paths`` into ``out``; see the module docstring for resumption."""
    import time

    from tqdm import tqdm

    log = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out)
    fmt = _check_setup([Path(p) for p in paths], out, input_format, output_format, batch_size, chunk_sentences)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    progress_path = out.with_name(out.name + PROGRESS_SUFFIX)
    errors_path = out.with_name(out.name + ".errors.jsonl")
    paths = [Path(p) for p in paths]
    options = {"input_format": input_format, "id_field": id_field, "text_field": text_field, "fmt": fmt,
               "per_document": per_document, "max_chars": max_chars, "chunk_sentences": chunk_sentences}
    signature = _signature(paths, model, options)

    state = None
    if overwrite:
        for stale in (out, progress_path, errors_path):
            if stale.exists():
                stale.unlink()
        if partial.is_dir():
            import shutil

            shutil.rmtree(partial)
        elif partial.exists():
            partial.unlink()
    elif progress_path.exists():
        state = json.loads(progress_path.read_text(encoding="utf-8"))
        if state.get("signature") != signature:
            raise StanceclfError("an interrupted run with other inputs, model or options left this progress file; "
                                 "rerun the same command, or pass --overwrite to start again", where=str(progress_path))
        if out.exists() and not partial.exists():
            # Killed after the output took its final name, before the progress file went.
            progress_path.unlink()
            log("the interrupted run had already finished its output; nothing left to do")
            return ScoreSummary(documents=state["documents"], sentences=state["sentences"],
                                skipped=state["skipped"], truncated=state.get("truncated", 0),
                                resumed_from=state["records_done"])
    elif out.exists():
        raise StanceclfError("the output exists and is complete; pass --overwrite to score again", where=str(out))

    labels = model.labels
    if per_document:
        columns = ["doc_id", "sentences", *[f"n_{l}" for l in labels], *[f"share_{l}" for l in labels]]
    else:
        columns = ["doc_id", "sentence_index", "start", "end", "text", "labels", *[f"score_{l}" for l in labels]]
    writer = _Writer(partial, fmt, columns)
    writer.open(state["output_length"] if state else None)
    summary = ScoreSummary()
    done = state["records_done"] if state else 0
    summary.resumed_from = done
    if state:
        summary.documents, summary.sentences, summary.skipped = state["documents"], state["sentences"], state["skipped"]
        summary.truncated = state.get("truncated", 0)
        summary.resumed_sentences = summary.sentences
        _truncate_lines(errors_path, state["errors_written"])
        log(f"resuming after {done} records ({summary.sentences} sentences already written)")
    errors_written = state["errors_written"] if state else 0
    # A fresh run starts a fresh error log: lines from a run killed before its first checkpoint are redone.
    errors = open(errors_path, "a" if state else "w", encoding="utf-8")
    started = time.time()
    bar = tqdm(total=None, unit=" sent", disable=not progress, dynamic_ncols=True, desc="scoring", file=sys.stderr)

    def flush(chunk: list[tuple[InputRecord, list]], next_done: int):
        texts = [s.text for _, sentences in chunk for s in sentences]
        probs, truncated = model.predict_proba(texts, batch_size=batch_size)
        rows, cursor = [], 0
        for record, sentences in chunk:
            block = probs[cursor: cursor + len(sentences)]
            cursor += len(sentences)
            if per_document:
                hits = np.array([[label in model.decide(p)[1] for label in labels] for p in block],
                                dtype=bool).reshape(len(block), len(labels))
                row = {"doc_id": record.doc_id, "sentences": len(sentences)}
                row.update({f"n_{l}": int(hits[:, j].sum()) for j, l in enumerate(labels)})
                row.update({f"share_{l}": round(float(hits[:, j].mean()), 6) if len(sentences) else 0.0
                            for j, l in enumerate(labels)})
                rows.append(row)
            else:
                for index, (sentence, p) in enumerate(zip(sentences, block)):
                    scores, chosen = model.decide(p)
                    row = {"doc_id": record.doc_id, "sentence_index": index, "start": sentence.start,
                           "end": sentence.end, "text": sentence.text, "labels": chosen}
                    row.update({f"score_{l}": scores[l] for l in labels})
                    rows.append(row)
        if rows:
            writer.write(rows)
        summary.documents += len(chunk)
        summary.sentences += len(texts)
        summary.truncated += sum(truncated)
        errors.flush()
        os.fsync(errors.fileno())
        length = writer.commit()
        _write_json_atomic(progress_path, {
            "signature": signature, "records_done": next_done, "output_length": length,
            "documents": summary.documents, "sentences": summary.sentences, "skipped": summary.skipped,
            "truncated": summary.truncated, "errors_written": errors_written})
        bar.update(len(texts))
        bar.set_postfix(docs=summary.documents, skipped=summary.skipped)

    try:
        chunk: list[tuple[InputRecord, list]] = []
        pending = 0
        # Records before this number are finished (scored or logged as skipped).
        seen = done
        for record in iter_records(paths, input_format, id_field=id_field, text_field=text_field,
                                   max_chars=max_chars):
            if record.number < done:
                continue
            seen = record.number + 1
            if record.error is not None:
                message = f"record {record.number} ({record.where}, id {record.doc_id!r}): {record.error}"
                if on_error == "stop":
                    if chunk:
                        flush(chunk, record.number)
                    raise InputRecordError(record.error + "; pass --on-error skip to log it and go on",
                                           where=f"record {record.number} ({record.where}, id {record.doc_id!r})")
                errors.write(json.dumps({"record": record.number, "where": record.where, "doc_id": record.doc_id,
                                         "error": record.error}, ensure_ascii=False) + "\n")
                errors_written += 1
                summary.skipped += 1
                log(f"skipped {message}")
                continue
            sentences = model.split(record.text)
            chunk.append((record, sentences))
            pending += len(sentences)
            if pending >= chunk_sentences:
                flush(chunk, record.number + 1)
                chunk, pending = [], 0
        # The last (possibly empty) chunk also records the final state, skipped trailing records included.
        flush(chunk, seen)
    finally:
        bar.close()
        writer.close()
        errors.close()
    writer.finish(out)
    progress_path.unlink()
    if errors_written == 0 and errors_path.exists():
        errors_path.unlink()
    summary.seconds = time.time() - started
    return summary


def _check_setup(paths: list[Path], out: Path, input_format: str, output_format: str, batch_size: int,
                 chunk_sentences: int) -> str:
    """Refuse a run that cannot work before anything is read or written; returns the output format."""
    if input_format not in ("auto", "txt", "jsonl", "csv", "parquet"):
        raise ScoringSetupError(f"unknown input format {input_format!r}: use auto, txt, jsonl, csv or parquet")
    for path in paths:
        if not path.exists():
            raise ScoringSetupError("input not found", where=str(path))
        if input_format == "auto":
            detect_input_format(path)
    if batch_size < 1 or chunk_sentences < 1:
        raise ScoringSetupError(f"batch size and chunk size must be at least 1, got {batch_size} and "
                                f"{chunk_sentences}")
    if output_format == "auto":
        suffixes = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
        if out.suffix.lower() not in suffixes:
            raise ScoringSetupError("cannot tell the output format from the name: end it in .jsonl, .csv or "
                                    ".parquet", where=str(out))
        output_format = suffixes[out.suffix.lower()]
    elif output_format not in ("jsonl", "csv", "parquet"):
        raise ScoringSetupError(f"unknown output format {output_format!r}: use jsonl, csv or parquet")
    if not out.parent.is_dir():
        raise ScoringSetupError("the output's folder does not exist", where=str(out.parent))
    return output_format


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` lines of the error log (rows past the last checkpoint are redone)."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        lines = handle.readlines()[:keep]
    with open(path, "wb") as handle:
        handle.writelines(lines)
