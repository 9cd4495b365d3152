"""Sentence sheets: a plain-text way for a person to annotate whole articles.

``export_sheets`` writes, per document, ``<id>.sheet.txt`` (numbered sentences
to read in order) and ``<id>.offsets.json`` (their offsets and the text's
checksum). The annotator writes ``<id>.tsv`` with one line per sentence::

    <index><TAB><labels><TAB><optional note>

where labels is ``-`` or a comma list of label names or their one-letter
codes. ``import_decisions`` turns those files into stand-off spans (one span
per labelled sentence, covering the sentence) with the annotator recorded.
Sheets hold the document text: keep them out of the repository when the text
may not be redistributed; only the decisions become stand-off annotations.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from stanceclf.data.documents import AnnotatedDocument, Span, text_checksum
from stanceclf.errors import AnnotationError, ChecksumMismatchError, InputFileError
from stanceclf.data.schema import LabelSchema, load_schema
from stanceclf.data.sentences import SentenceSplitter


def label_codes(schema: LabelSchema) -> dict[str, str]:
    """One distinct letter per label of a schema (the claim-types schema: P, T, A)."""
    preferred = {"prediction": "P", "threat_framing": "T", "policy_attribution": "A"}
    codes: dict[str, str] = {}
    for name in schema.label_names:  # preferred letters first, so that no other label takes them
        if preferred.get(name) and preferred[name] not in codes:
            codes[preferred[name]] = name
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for name in schema.label_names:
        if name in codes.values():
            continue
        code = next((c for c in name.upper() + alphabet if c in alphabet and c not in codes), name)
        codes[code] = name
    return codes


def export_sheets(documents: dict[str, str], out_dir: str | Path, splitter: SentenceSplitter | None = None, *,
                  schema: LabelSchema | None = None) -> int:
    """Write a sheet and an offsets file per ``{doc_id: text}``; returns the number of sentences."""
    splitter = splitter or SentenceSplitter()
    codes = label_codes(schema or load_schema("claim-types"))
    legend = ", ".join(f"{code}={name}" for code, name in codes.items())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for doc_id, text in documents.items():
        sentences = splitter.split(text)
        total += len(sentences)
        lines = [f"# document {doc_id}  ({len(sentences)} sentences; judge each in the context of the whole article)",
                 f"# codes: {legend}; '-' for none"]
        lines += [f"[{i}] {s.text}" for i, s in enumerate(sentences)]
        write_sheet(out_dir, doc_id, text, sentences, lines)
    return total


def write_sheet(out_dir: Path, doc_id: str, text: str, sentences, lines: list[str]) -> None:
    """A sheet's two files: ``<doc_id>.sheet.txt`` (``lines``, for the reader) and ``<doc_id>.offsets.json``
    (the sentences' offsets and the text's checksum, to map the reader's decisions back onto the text)."""
    (out_dir / f"{doc_id}.sheet.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    offsets = {"doc_id": doc_id, "checksum": text_checksum(text), "sentences": [[s.start, s.end] for s in sentences]}
    (out_dir / f"{doc_id}.offsets.json").write_text(json.dumps(offsets), encoding="utf-8")


def read_sheet_offsets(path: Path, text: str) -> dict:
    """A sheet's offsets file: ``doc_id``, ``checksum`` and ``sentences`` (each sentence's ``[start, end]``);
    an error naming the file when it cannot be read or was made for another text."""
    try:
        offsets = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"cannot read the sheet's offsets file: {exc}", where=str(path)) from None
    if (not isinstance(offsets, dict) or not isinstance(offsets.get("sentences"), list)
            or not isinstance(offsets.get("doc_id"), str)):
        raise AnnotationError("not a sheet's offsets file: a JSON object with 'doc_id', 'checksum' and "
                              "'sentences' expected",
                              where=str(path))
    if offsets.get("checksum") != text_checksum(text):
        raise ChecksumMismatchError("the document changed since its sheet was made", where=str(path))
    return offsets


def decision_lines(path: Path, schema: LabelSchema) -> Iterator[tuple[str, int, list[str], str]]:
    """``(where, sentence index, labels, note)`` of each line of a decision file, whose lines are
    ``<index><TAB><labels><TAB><optional note>`` (blank lines and ``#`` lines are skipped); the labels are
    ``-`` for none, or label codes (:func:`label_codes`) or names joined by commas."""
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read the decision file: {exc}", where=str(path)) from None
    codes = label_codes(schema)
    for line_number, line in enumerate(raw.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path}:{line_number}"
        parts = line.split("\t")
        try:
            index = int(parts[0])
        except ValueError:
            raise AnnotationError(f"bad sentence index {parts[0]!r}", where=where) from None
        labels = _parse_labels(parts[1] if len(parts) > 1 else "", codes, schema, where)
        yield where, index, labels, parts[2].strip() if len(parts) > 2 else ""


def _parse_labels(cell: str, codes: dict[str, str], schema: LabelSchema, where: str) -> list[str]:
    cell = cell.strip()
    if not cell:
        raise AnnotationError("no decision: write '-' for a sentence without labels", where=where)
    if cell == "-":
        return []
    labels = []
    for item in (part.strip() for part in cell.split(",")):
        label = codes.get(item, item)
        if label not in schema.label_names:
            raise AnnotationError(f"unknown label {item!r}; use {sorted(codes)} or {schema.label_names}", where=where)
        labels.append(label)
    return labels


def import_decisions(decisions: str | Path, offsets_file: str | Path, text: str, schema: LabelSchema,
                     annotator: str) -> tuple[AnnotatedDocument, dict[int, str]]:
    """Read one decision file into an :class:`AnnotatedDocument`; also returns the notes by sentence."""
    decisions, offsets_file = Path(decisions), Path(offsets_file)
    offsets = read_sheet_offsets(offsets_file, text)
    sentences = offsets["sentences"]
    spans: list[Span] = []
    notes: dict[int, str] = {}
    seen: set[int] = set()
    for where, index, labels, note in decision_lines(decisions, schema):
        if not 0 <= index < len(sentences) or index in seen:
            raise AnnotationError(f"sentence index {index} out of range or repeated", where=where)
        seen.add(index)
        if note:
            notes[index] = note
        start, end = sentences[index]
        spans += [Span(start, end, label, annotator) for label in labels]
    missing = sorted(set(range(len(sentences))) - seen)
    if missing:
        raise AnnotationError(f"no decision for sentences {missing}: annotate the whole document", where=str(decisions))
    return AnnotatedDocument(offsets["doc_id"], text, sorted(spans), (annotator,)), notes


def sheet_text_files(paths) -> dict[str, Path]:
    """``{doc_id: path}`` of the text files to put on sheets: files as given, folders' ``*.txt``.

    A document's id is its file name without the suffix (the import finds ``<doc_id>.txt`` again), so
    two files of one name (``a.txt`` in two folders, or ``a.txt`` and ``a.TXT``) are an error naming both.
    """
    files = [p for t in map(Path, paths) for p in (sorted(t.glob("*.txt")) if t.is_dir() else [t])]
    by_id: dict[str, Path] = {}
    for file in files:
        if file.stem in by_id:
            raise AnnotationError(f"two texts would get the document id {file.stem!r} (first {by_id[file.stem]}); "
                                  "sheet ids are file names without their suffix: rename one", where=str(file))
        by_id[file.stem] = file
    return by_id


def task_texts(path: str | Path) -> dict[str, str]:
    """``{doc_id: text}`` of a Label Studio task file such as ``stanceclf suggest`` writes (a JSON list of
    tasks, each with ``data.doc_id`` and ``data.text``): what an annotation round was given to read."""
    from stanceclf.data.documents import document_id
    from stanceclf.errors import parse_json_text

    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"cannot read the task file: {exc}", where=str(path)) from None
    tasks = parse_json_text(raw, AnnotationError, str(path))
    if not isinstance(tasks, list):
        raise AnnotationError("a task file is a JSON list of tasks", where=str(path))
    texts: dict[str, str] = {}
    for number, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        where = f"{path} (task {number})"
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise AnnotationError("a task needs 'data' with a 'text' string", where=where)
        try:
            doc_id = document_id(data.get("doc_id"))
        except ValueError as exc:
            raise AnnotationError(f"bad data.doc_id: {exc}", where=where) from None
        if doc_id in texts:
            raise AnnotationError(f"document id {doc_id!r} appears twice", where=where)
        texts[doc_id] = data["text"]
    return texts


def sheet_texts(paths) -> dict[str, str]:
    """``{doc_id: text}`` to put on sheets: text files and folders (see :func:`sheet_text_files`) and task
    files (``.json``, see :func:`task_texts`); an id given twice is an error naming it."""
    from stanceclf.data.documents import read_document_text

    texts: dict[str, str] = {}
    files = [Path(p) for p in paths]
    given = [(doc_id, read_document_text(f), f) for doc_id, f in
             sheet_text_files([f for f in files if f.suffix.lower() != ".json"]).items()]
    for task_file in (f for f in files if f.suffix.lower() == ".json"):
        given += [(doc_id, text, task_file) for doc_id, text in task_texts(task_file).items()]
    for doc_id, text, source in given:
        if doc_id in texts:
            raise AnnotationError(f"the document id {doc_id!r} is given twice", where=str(source))
        texts[doc_id] = text
    return texts


def import_decision_folder(decisions: str | Path, sheets: str | Path, schema: LabelSchema, annotator: str, *,
                           texts: str | Path | None = None, corpora=()
                           ) -> tuple[list[AnnotatedDocument], dict[str, Path], dict[str, Path]]:
    """Import every ``<doc_id>.tsv`` of a folder, with its sheet's ``<doc_id>.offsets.json`` and the
    document's text: ``<doc_id>.txt`` in ``texts``, or the record of that id in one of the JSONL
    ``corpora`` (as ``stanceclf score`` reads them). Returns ``(documents, {doc_id: text file},
    {doc_id: corpus file})``, ready for :func:`~stanceclf.data.readers.write_native`, which stores them by
    reference: the text is never copied."""
    from stanceclf.data.corpus_inputs import read_corpus_texts
    from stanceclf.data.documents import read_document_text

    decisions, sheets = Path(decisions), Path(sheets)
    files = sorted(decisions.glob("*.tsv")) if decisions.is_dir() else []
    if not files:
        raise InputFileError("no <doc_id>.tsv decision files here", where=str(decisions))
    wanted = {file.stem for file in files}
    in_corpus: dict[str, tuple[Path, str]] = {}
    for corpus in map(Path, corpora):
        for doc_id, text in read_corpus_texts(corpus, wanted).items():
            if doc_id in in_corpus:  # which text was annotated cannot be told
                raise AnnotationError(f"document {doc_id!r} is in two corpus files: {in_corpus[doc_id][0]} and "
                                      f"{corpus}; import each file's documents separately", where=str(corpus))
            in_corpus[doc_id] = (corpus, text)
    documents, paths, records = [], {}, {}
    for file in files:
        if file.stem in in_corpus:
            corpus, text = in_corpus[file.stem]
            records[file.stem] = corpus
        elif texts is not None:
            paths[file.stem] = Path(texts) / f"{file.stem}.txt"
            text = read_document_text(paths[file.stem])
        else:
            raise InputFileError(f"document {file.stem!r} is in none of the corpus files "
                                 f"{', '.join(map(str, corpora)) or '(none given)'}", where=str(file))
        document, _ = import_decisions(file, sheets / f"{file.stem}.offsets.json", text, schema, annotator)
        documents.append(document)
    return documents, paths, records
