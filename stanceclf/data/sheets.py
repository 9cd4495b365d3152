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
from pathlib import Path

from stanceclf.data.documents import AnnotatedDocument, Span, text_checksum
from stanceclf.errors import AnnotationError, ChecksumMismatchError
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
        (out_dir / f"{doc_id}.sheet.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        offsets = {"doc_id": doc_id, "checksum": text_checksum(text),
                   "sentences": [[s.start, s.end] for s in sentences]}
        (out_dir / f"{doc_id}.offsets.json").write_text(json.dumps(offsets), encoding="utf-8")
    return total


def import_decisions(decisions: str | Path, offsets_file: str | Path, text: str, schema: LabelSchema,
                     annotator: str) -> tuple[AnnotatedDocument, dict[int, str]]:
    """Read one decision file into an :class:`AnnotatedDocument`; also returns the notes by sentence."""
    decisions, offsets_file = Path(decisions), Path(offsets_file)
    try:
        offsets = json.loads(offsets_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"cannot read the sheet's offsets file: {exc}", where=str(offsets_file)) from None
    if offsets["checksum"] != text_checksum(text):
        raise ChecksumMismatchError("the document changed since its sheet was made", where=str(offsets_file))
    sentences = offsets["sentences"]
    codes = label_codes(schema)
    spans: list[Span] = []
    notes: dict[int, str] = {}
    seen: set[int] = set()
    for line_number, line in enumerate(decisions.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{decisions}:{line_number}"
        parts = line.split("\t")
        try:
            index = int(parts[0])
        except ValueError:
            raise AnnotationError(f"bad sentence index {parts[0]!r}", where=where) from None
        if not 0 <= index < len(sentences) or index in seen:
            raise AnnotationError(f"sentence index {index} out of range or repeated", where=where)
        seen.add(index)
        raw = parts[1].strip() if len(parts) > 1 else ""
        if not raw:
            raise AnnotationError("no decision: write '-' for a sentence without labels", where=where)
        if len(parts) > 2 and parts[2].strip():
            notes[index] = parts[2].strip()
        if raw == "-":
            continue
        start, end = sentences[index]
        for item in raw.split(","):
            item = item.strip()
            label = codes.get(item, item)
            if label not in schema.label_names:
                raise AnnotationError(f"unknown label {item!r}; use {sorted(codes)} or {schema.label_names}",
                                      where=where)
            spans.append(Span(start, end, label, annotator))
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


def import_decision_folder(decisions: str | Path, sheets: str | Path, texts: str | Path, schema: LabelSchema,
                           annotator: str) -> tuple[list[AnnotatedDocument], dict[str, Path]]:
    """Import every ``<doc_id>.tsv`` of a folder, with its sheet's ``<doc_id>.offsets.json`` and the text
    ``<doc_id>.txt``: ``(documents, {doc_id: text path})`` ready for :func:`~stanceclf.data.readers.write_native`."""
    from stanceclf.data.documents import read_document_text
    from stanceclf.errors import InputFileError

    decisions, sheets, texts = Path(decisions), Path(sheets), Path(texts)
    files = sorted(decisions.glob("*.tsv")) if decisions.is_dir() else []
    if not files:
        raise InputFileError("no <doc_id>.tsv decision files here", where=str(decisions))
    documents, paths = [], {}
    for file in files:
        text_path = texts / f"{file.stem}.txt"
        document, _ = import_decisions(file, sheets / f"{file.stem}.offsets.json", read_document_text(text_path),
                                       schema, annotator)
        documents.append(document)
        paths[document.doc_id] = text_path
    return documents, paths
