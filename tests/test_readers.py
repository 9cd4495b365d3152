"""Annotation readers: every format into AnnotatedDocument, with offsets checked against the text."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from stanceclf.data.documents import Span, text_checksum
from stanceclf.errors import AnnotationError, ChecksumMismatchError, OffsetError, UnknownLabelError
from stanceclf.data.readers import ReadReport, read_annotations

FIXTURES = Path(__file__).parent / "fixtures" / "annotations"
PTC_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "ptc"
FORMATS = ["native", "label-studio", "doccano", "brat", "ptc"]
DOC_ID = "article123"  # a valid name in every format, PTC's included
TEXT = "Prices will rise next year. The minister blamed the bank.\n"
UTF16_REPAIR = "offsets counted in UTF-16 code units, converted to characters"
CRLF_REPAIR = "offsets counted on LF text of a CRLF document, converted"
OUT_OF_RANGE = "e bank. Rates will follow"  # [50, 90) as an export made on a longer text would give it


def at(text: str, phrase: str) -> tuple[int, int]:
    start = text.index(phrase)
    return start, start + len(phrase)


def write_doc(fmt: str, folder: Path, text: str, spans) -> tuple[Path, list[str]]:
    """Write one document in ``fmt``; ``spans`` are (start, end, label[, span text]) tuples.

    Returns the path to read and the location each span's errors must name.
    """
    spans = [(s, e, label, rest[0] if rest else text[s:e]) for s, e, label, *rest in spans]
    if fmt == "native":
        path = folder / "docs.jsonl"
        record = {"doc_id": DOC_ID, "text": text,
                  "spans": [{"start": s, "end": e, "label": label, "text": t} for s, e, label, t in spans]}
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
        return path, [f"{path}:1 (document {DOC_ID!r}) span {i}" for i in range(len(spans))]
    if fmt == "label-studio":
        path = folder / "export.json"
        results = [{"type": "labels", "value": {"start": s, "end": e, "text": t, "labels": [label]}}
                   for s, e, label, t in spans]
        task = {"id": DOC_ID, "data": {"text": text}, "annotations": [{"completed_by": 1, "result": results}]}
        path.write_text(json.dumps([task]), encoding="utf-8")
        return path, [f"{path} task 0 (id {DOC_ID}) annotation 0 result {i}" for i in range(len(spans))]
    if fmt == "doccano":
        path = folder / "docs.jsonl"
        record = {"id": DOC_ID, "text": text, "label": [[s, e, label] for s, e, label, _ in spans]}
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
        return path, [f"{path}:1 (document {DOC_ID!r}) label {i}" for i in range(len(spans))]
    # brat and PTC read the text file byte for byte: write it without newline translation.
    (folder / f"{DOC_ID}.txt").write_bytes(text.encode("utf-8"))
    if fmt == "brat":
        lines = [f"T{i + 1}\t{label} {s} {e}\t{t}\n" for i, (s, e, label, t) in enumerate(spans)]
        (folder / f"{DOC_ID}.ann").write_text("".join(lines), encoding="utf-8")
        return folder, [f"{folder / DOC_ID}.ann:{i + 1}" for i in range(len(spans))]
    lines = [f"123\t{label}\t{s}\t{e}\n" for s, e, label, _ in spans]
    (folder / f"{DOC_ID}.labels.tsv").write_text("".join(lines), encoding="utf-8")
    return folder, [f"{folder / DOC_ID}.labels.tsv:{i + 1}" for i in range(len(spans))]


def read_one(fmt: str, path: Path, **kwargs):
    documents = read_annotations(fmt, path, **kwargs)
    assert [d.doc_id for d in documents] == [DOC_ID]
    return documents[0]


# --- behaviour shared by every format -------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_each_format_overlapping_spans_kept(fmt, tmp_path):
    a, b = at(TEXT, "Prices will rise"), at(TEXT, "will rise next year")
    path, _ = write_doc(fmt, tmp_path, TEXT, [(*a, "prediction"), (*b, "threat_framing")])
    document = read_one(fmt, path)
    assert [(s.start, s.end, s.label) for s in document.spans] == [(0, 16, "prediction"), (7, 26, "threat_framing")]
    assert document.text == TEXT


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_each_format_span_crossing_sentence_boundary_kept(fmt, tmp_path):
    start, end = at(TEXT, "next year. The minister")
    path, _ = write_doc(fmt, tmp_path, TEXT, [(start, end, "prediction")])
    document = read_one(fmt, path)
    assert [(s.start, s.end) for s in document.spans] == [(start, end)]
    assert document.text[start:end] == "next year. The minister"


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_each_format_crlf_offsets_stay_correct(fmt, tmp_path):
    text = "Headline\r\nPrices will rise.\r\nThe bank failed.\r\n"
    spans = [(*at(text, "will rise"), "prediction"), (*at(text, "bank failed"), "threat_framing")]
    path, _ = write_doc(fmt, tmp_path, text, spans)
    report = ReadReport()
    document = read_one(fmt, path, report=report)
    assert document.text == text  # CRLF preserved, not translated
    assert [document.text[s.start:s.end] for s in document.spans] == ["will rise", "bank failed"]
    assert report.repaired == Counter()


@pytest.mark.parametrize("fmt", ["native", "doccano", "brat", "ptc"])
def test_readers_each_format_code_point_offsets_after_emoji(fmt, tmp_path):
    text = "Great \U0001F389 news: prices will rise.\n"
    path, _ = write_doc(fmt, tmp_path, text, [(*at(text, "prices will rise"), "prediction")])
    document = read_one(fmt, path)
    assert [(s.start, s.end) for s in document.spans] == [(14, 30)]
    assert document.text[14:30] == "prices will rise"


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_each_format_out_of_range_strict_raises_naming_record(fmt, tmp_path):
    path, where = write_doc(fmt, tmp_path, TEXT, [(0, 16, "prediction"), (50, 90, "prediction", OUT_OF_RANGE)])
    with pytest.raises(OffsetError) as excinfo:
        read_annotations(fmt, path)
    assert excinfo.value.where == where[1]
    assert str(excinfo.value).startswith(f"[E005] {where[1]}: ")


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_each_format_out_of_range_lenient_skips_and_reports(fmt, tmp_path):
    path, where = write_doc(fmt, tmp_path, TEXT, [(0, 16, "prediction"), (50, 90, "prediction", OUT_OF_RANGE)])
    report = ReadReport()
    document = read_one(fmt, path, strict=False, report=report)
    assert document.spans == [Span(0, 16, "prediction", document.spans[0].annotator)]
    assert len(report.skipped) == 1
    assert report.skipped[0].startswith(f"[E005] {where[1]}: ")
    assert (report.documents, report.spans) == (1, 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_each_format_reversed_offsets_rejected(fmt, tmp_path):
    path, where = write_doc(fmt, tmp_path, TEXT, [(16, 7, "prediction")])
    with pytest.raises(OffsetError, match="reversed offsets: start 16 > end 7") as excinfo:
        read_annotations(fmt, path)
    assert excinfo.value.where == where[0]


@pytest.mark.parametrize("fmt", ["native", "label-studio", "brat"])
def test_readers_each_format_span_text_mismatch_rejected(fmt, tmp_path):
    path, where = write_doc(fmt, tmp_path, TEXT, [(0, 16, "prediction", "Prices will fall")])
    message = "the export says 'Prices will fall' but \\[0, 16\\) holds 'Prices will rise'"
    with pytest.raises(OffsetError, match=message) as excinfo:
        read_annotations(fmt, path)
    assert excinfo.value.where == where[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_each_format_unknown_label_strict_raises(fmt, tmp_path):
    path, where = write_doc(fmt, tmp_path, TEXT, [(0, 16, "Loaded_Language")])
    with pytest.raises(UnknownLabelError, match="unknown label 'Loaded_Language'") as excinfo:
        read_annotations(fmt, path, labels={"propaganda"})
    assert excinfo.value.where == where[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_each_format_label_map_renames(fmt, tmp_path):
    path, _ = write_doc(fmt, tmp_path, TEXT, [(0, 16, "Loaded_Language")])
    document = read_one(fmt, path, labels={"propaganda"}, label_map={"Loaded_Language": "propaganda"})
    assert [(s.start, s.end, s.label) for s in document.spans] == [(0, 16, "propaganda")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_each_format_label_map_none_drops_and_counts(fmt, tmp_path):
    path, _ = write_doc(fmt, tmp_path, TEXT, [(0, 16, "Loaded_Language"), (7, 26, "Doubt")])
    report = ReadReport()
    document = read_one(fmt, path, labels={"doubt"}, label_map={"Loaded_Language": None, "Doubt": "doubt"},
                        report=report)
    assert [(s.start, s.end, s.label) for s in document.spans] == [(7, 26, "doubt")]
    assert report.mapped_out == Counter({"Loaded_Language": 1})
    assert report.skipped == []


# --- Label Studio ---------------------------------------------------------------------------------


def test_readers_label_studio_full_export():
    report = ReadReport()
    path = FIXTURES / "label_studio" / "full.json"
    documents = read_annotations("label-studio", path, report=report)
    assert [d.doc_id for d in documents] == ["101", "doc-b"]
    first, second = documents
    assert first.annotators == ("label-studio-user-3", "label-studio-user-5")
    assert first.spans == [
        Span(0, 16, "prediction", "label-studio-user-3"),
        Span(7, 26, "prediction", "label-studio-user-5"),
        Span(7, 26, "threat_framing", "label-studio-user-5"),
        Span(32, 56, "policy_attribution", "label-studio-user-3"),
    ]
    assert (second.text, second.spans, second.annotators) == ("Nothing to see here.\n", [], ("label-studio-user-3",))
    assert report.skipped == [f"{path} task 0 (id 101) annotation 2: cancelled (skipped) by its annotator, not read",
                              f"{path} task 2 (id 103): no annotation, task not read"]
    assert (report.documents, report.spans) == (2, 4)


def test_readers_label_studio_annotator_override():
    documents = read_annotations("label-studio", FIXTURES / "label_studio" / "full.json", annotator="team")
    assert documents[0].annotators == ("team",)
    assert {s.annotator for s in documents[0].spans} == {"team"}


def test_readers_label_studio_json_min():
    documents = read_annotations("label-studio", FIXTURES / "label_studio" / "min.json")
    assert [d.doc_id for d in documents] == ["7", "min-1"]
    assert documents[0].spans == [Span(28, 57, "policy_attribution", "label-studio-user-2")]
    assert documents[0].text[28:57] == "The minister blamed the bank."
    assert (documents[1].text, documents[1].spans) == ("Second.\n", [])


def test_readers_label_studio_utf16_offsets_repaired(tmp_path):
    text = "Wow \U0001F600\U0001F600 prices will rise.\n"
    # What the browser counts: each emoji is two UTF-16 code units, so the phrase starts at 9, not 7.
    path, _ = write_doc("label-studio", tmp_path, text, [(9, 25, "prediction", "prices will rise")])
    report = ReadReport()
    document = read_one("label-studio", path, report=report)
    assert [(s.start, s.end) for s in document.spans] == [(7, 23)]
    assert document.text[7:23] == "prices will rise"
    assert report.repaired == Counter({UTF16_REPAIR: 1})


def test_readers_label_studio_end_past_text_rejected_even_if_span_text_matches_tail(tmp_path):
    path, _ = write_doc("label-studio", tmp_path, TEXT, [(50, 90, "prediction", TEXT[50:])])
    with pytest.raises(OffsetError):
        read_annotations("label-studio", path)


def test_readers_label_studio_lf_offsets_of_crlf_document_repaired(tmp_path):
    text = "Headline\r\nSecond line\r\nPrices will rise.\r\n"
    lf_start, lf_end = at(text.replace("\r\n", "\n"), "Prices will rise")
    path, _ = write_doc("label-studio", tmp_path, text, [(lf_start, lf_end, "prediction", "Prices will rise")])
    report = ReadReport()
    document = read_one("label-studio", path, report=report)
    assert (lf_start, lf_end) == (21, 37)
    assert [(s.start, s.end) for s in document.spans] == [(23, 39)]
    assert document.text[23:39] == "Prices will rise"
    assert report.repaired == Counter({CRLF_REPAIR: 1})


def test_readers_label_studio_not_a_task_list(tmp_path):
    path = tmp_path / "export.json"
    path.write_text('{"data": {}}', encoding="utf-8")
    with pytest.raises(AnnotationError, match="must be a JSON list of tasks") as excinfo:
        read_annotations("label-studio", path)
    assert excinfo.value.where == str(path)


def test_readers_label_studio_missing_text_field(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"id": 4, "data": {"body": "x"}, "annotations": [{"result": []}]}]), encoding="utf-8")
    # The error names the real options: the CLI's --reader-option and the recipe's reader_options.
    with pytest.raises(AnnotationError, match="no document text under data\\['text'\\].*string fields: \\['body'\\]"):
        read_annotations("label-studio", path, text_field="text")
    assert [d.text for d in read_annotations("label-studio", path, text_field="body")] == ["x"]


# Two annotators on one task, as Label Studio 1.23 exports it (see tests/test_labelstudio_roundtrip.py).
LS_TEXT = "Prices will rise next year. The minister blamed the bank.\n"
LS_SPANS = {3: [(0, 27, "prediction")], 8: [(28, 57, "policy_attribution"), (0, 27, "threat_framing")]}


def _ls_value(start, end, label, text=LS_TEXT):
    return {"start": start, "end": end, "text": text[start:end], "labels": [label]}


def _ls_exports(tmp_path, text_field="text", data_extra=None):
    """The full JSON and the JSON_MIN export of one project: task 5, annotated by users 3 and 8."""
    data = {text_field: LS_TEXT, **(data_extra or {})}
    full = [{"id": 5, "data": data, "annotations": [
        {"id": number, "completed_by": user, "result": [
            {"from_name": "label", "to_name": "text", "type": "labels", "value": _ls_value(*span)} for span in spans]}
        for number, (user, spans) in enumerate(LS_SPANS.items(), 1)]}]
    # JSON_MIN: one item per annotation, newest first, the task's data keys beside the annotation's.
    minimal = [{**data, "id": 5, "label": [_ls_value(*span) for span in spans], "annotator": user,
                "annotation_id": number, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                "lead_time": 3.5}
               for number, (user, spans) in reversed(list(enumerate(LS_SPANS.items(), 1)))]
    paths = tmp_path / "full.json", tmp_path / "min.json"
    for path, items in zip(paths, (full, minimal)):
        path.write_text(json.dumps(items), encoding="utf-8")
    return paths


def _as_tuples(documents):
    return [(d.doc_id, d.text, d.annotators, [(s.start, s.end, s.label, s.annotator) for s in d.spans])
            for d in documents]


def test_readers_label_studio_json_min_several_annotators_merged_like_the_full_export(tmp_path):
    full, minimal = _ls_exports(tmp_path)
    for strict in (True, False):  # lenient mode used to keep one annotation and drop the other
        documents = read_annotations("label-studio", minimal, strict=strict)
        assert _as_tuples(documents) == [("5", LS_TEXT, ("label-studio-user-3", "label-studio-user-8"), [
            (0, 27, "prediction", "label-studio-user-3"), (0, 27, "threat_framing", "label-studio-user-8"),
            (28, 57, "policy_attribution", "label-studio-user-8")])]
        assert _as_tuples(read_annotations("label-studio", full, strict=strict)) == _as_tuples(documents)


def test_readers_label_studio_per_annotator_documents_from_both_exports(tmp_path):
    full, minimal = _ls_exports(tmp_path)
    documents = read_annotations("label-studio", minimal, annotations="per-annotator")
    assert _as_tuples(documents) == [
        ("5@label-studio-user-3", LS_TEXT, ("label-studio-user-3",), [(0, 27, "prediction", "label-studio-user-3")]),
        ("5@label-studio-user-8", LS_TEXT, ("label-studio-user-8",), [
            (0, 27, "threat_framing", "label-studio-user-8"), (28, 57, "policy_attribution", "label-studio-user-8")]),
    ]
    assert _as_tuples(read_annotations("label-studio", full, annotations="per-annotator")) == _as_tuples(documents)
    with pytest.raises(AnnotationError, match="annotations must be one of \\['merge', 'per-annotator'\\]"):
        read_annotations("label-studio", minimal, annotations="first")


def test_readers_label_studio_doc_id_from_task_data(tmp_path):
    full, minimal = _ls_exports(tmp_path, data_extra={"doc_id": "article-9"})
    for path in (full, minimal):
        assert [d.doc_id for d in read_annotations("label-studio", path)] == ["article-9"]


def test_readers_label_studio_json_min_task_without_annotation_not_read(tmp_path):
    # download_all_tasks=true exports an unlabelled task as an item with a null annotation_id.
    path = tmp_path / "min.json"
    path.write_text(json.dumps([{"text": LS_TEXT, "id": 6, "annotator": None, "annotation_id": None}]),
                    encoding="utf-8")
    report = ReadReport()
    assert read_annotations("label-studio", path, report=report) == []
    assert report.skipped == [f"{path} task 0 (id 6): no annotation, task not read"]


def test_readers_label_studio_text_field_found_in_the_data(tmp_path):
    # <Text value="$body">: no 'text' key; 'body' is the one string field holding every span's text.
    for path in _ls_exports(tmp_path, text_field="body", data_extra={"title": "Markets", "doc_id": "a"}):
        documents = read_annotations("label-studio", path)
        assert [(d.doc_id, d.text, len(d.spans)) for d in documents] == [("a", LS_TEXT, 3)]


def test_readers_label_studio_text_field_ambiguous_names_candidates_and_options(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"id": 1, "data": {"body": "One.", "summary": "Two."},
                                 "annotations": [{"completed_by": 1, "result": []}]}]), encoding="utf-8")
    with pytest.raises(AnnotationError, match="candidates: \\['body', 'summary'\\].*--reader-option "
                       "text_field=NAME.*reader_options = \\{text_field"):
        read_annotations("label-studio", path)
    assert [d.text for d in read_annotations("label-studio", path, text_field="summary")] == ["Two."]


def test_readers_label_studio_text_field_from_cli_and_recipe(tmp_path):
    from typer.testing import CliRunner

    from stanceclf.cli import app

    _, minimal = _ls_exports(tmp_path, text_field="body", data_extra={"headline": "Prices will rise next year."})
    runner = CliRunner()
    # 'headline' holds one span's text but not the other's: only 'body' fits, and naming it works too.
    result = runner.invoke(app, ["build-dataset", str(minimal), "--format", "label-studio", "--out",
                                 str(tmp_path / "cli"), "--reader-option", "text_field=body"])
    assert result.exit_code == 0, result.output
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('name = "r"\nschema = "claim-types"\noutput_dir = "m"\n[data]\nformat = "label-studio"\n'
                      'inputs = ["min.json"]\nreader_options = {text_field = "body", annotations = "per-annotator"}\n',
                      encoding="utf-8")
    result = runner.invoke(app, ["build-dataset", "--recipe", str(recipe), "--out", str(tmp_path / "recipe")])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "recipe" / "build.json").read_text())
    assert sorted(d for docs in info["documents"].values() for d in docs) == ["5@label-studio-user-3",
                                                                             "5@label-studio-user-8"]


# --- doccano --------------------------------------------------------------------------------------


def test_readers_doccano_both_layouts():
    documents = read_annotations("doccano", FIXTURES / "doccano" / "docs.jsonl")
    assert [d.doc_id for d in documents] == ["1", "docs-2", "c"]
    assert documents[0].spans == [Span(0, 16, "prediction", "doccano"), Span(7, 26, "threat_framing", "doccano")]
    assert documents[1].spans == [Span(0, 6, "prediction", "doccano")]
    assert (documents[2].spans, documents[2].annotators) == ([Span(0, 5, "prediction", "doccano")], ("doccano",))


def test_readers_doccano_bad_lines(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": 1, "text": "Fine.", "label": []}\nnot json\n{"id": 3, "label": []}\n', encoding="utf-8")
    with pytest.raises(AnnotationError, match="not valid JSON") as excinfo:
        read_annotations("doccano", path)
    assert excinfo.value.where == f"{path}:2"
    report = ReadReport()
    documents = read_annotations("doccano", path, strict=False, report=report)
    assert [d.doc_id for d in documents] == ["1"]
    assert [line.split(": ")[0] for line in report.skipped] == [f"[E002] {path}:2", f"[E002] {path}:3"]
    # The hint names the real options: build-dataset's --reader-option and the recipe's reader_options.
    assert "no document text under 'text'; name it with --reader-option text_field=NAME" in report.skipped[1]
    assert 'reader_options = {text_field = "NAME"}' in report.skipped[1]


def test_readers_doccano_classification_labels_rejected(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": 1, "text": "Fine.", "label": ["POSITIVE"]}\n', encoding="utf-8")
    with pytest.raises(AnnotationError, match="a span must be \\[start, end, label\\], got 'POSITIVE'"):
        read_annotations("doccano", path)


def test_readers_doccano_category_string_skips_the_document_in_lenient_mode(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": 1, "text": "Fine.", "entities": [{"start_offset": 0, "end_offset": 4, "label": '
                    '"prediction"}], "label": "POSITIVE"}\n{"id": 2, "text": "Also fine.", "label": []}\n',
                    encoding="utf-8")
    report = ReadReport()
    documents = read_annotations("doccano", path, strict=False, report=report)
    assert [d.doc_id for d in documents] == ["2"]
    assert len(report.skipped) == 1 and "text-classification export" in report.skipped[0]
    assert (report.documents, report.spans) == (1, 0)


# --- brat -----------------------------------------------------------------------------------------


def test_readers_brat_folder_with_discontinuous_fragments_and_other_lines():
    report = ReadReport()
    documents = read_annotations("brat", FIXTURES / "brat", report=report)
    assert [d.doc_id for d in documents] == ["doc1", "doc2"]
    # T2 "Prices ... minister blamed the bank" is two fragments; A1, R1 and #1 are not spans.
    assert documents[0].spans == [
        Span(0, 6, "policy_attribution", "brat"),
        Span(0, 16, "prediction", "brat"),
        Span(32, 56, "policy_attribution", "brat"),
    ]
    assert (documents[1].spans, documents[1].annotators) == ([], ("brat",))
    assert report.skipped == [] and report.spans == 3


@pytest.mark.parametrize("name", ["doc1.ann", "doc1.txt"])
def test_readers_brat_single_file_takes_its_pair(name):
    documents = read_annotations("brat", FIXTURES / "brat" / name)
    assert [(d.doc_id, len(d.spans)) for d in documents] == [("doc1", 3)]


def test_readers_brat_discontinuous_fragment_text_mismatch(tmp_path):
    (tmp_path / "d.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "d.ann").write_text("T1\tprediction 0 6;32 56\tPrices minister blamed the BANK\n", encoding="utf-8")
    with pytest.raises(OffsetError, match="the export says 'minister blamed the BANK'") as excinfo:
        read_annotations("brat", tmp_path)
    assert excinfo.value.where == f"{tmp_path / 'd.ann'}:1 fragment 1"


def test_readers_brat_malformed_t_line(tmp_path):
    (tmp_path / "d.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "d.ann").write_text("T1\tprediction 0 16\tPrices will rise\nT2\tprediction zero 5\tPrice\n",
                                    encoding="utf-8")
    with pytest.raises(AnnotationError, match="malformed line") as excinfo:
        read_annotations("brat", tmp_path)
    assert excinfo.value.where == f"{tmp_path / 'd.ann'}:2"


def test_readers_brat_byte_order_mark_in_ann_file(tmp_path):
    (tmp_path / "d.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "d.ann").write_text("\ufeffT1\tprediction 0 16\tPrices will rise\n", encoding="utf-8")
    documents = read_annotations("brat", tmp_path)
    assert documents[0].spans == [Span(0, 16, "prediction", "brat")]


def test_readers_brat_missing_txt(tmp_path):
    (tmp_path / "d.ann").write_text("T1\tprediction 0 16\tPrices will rise\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="missing file d.txt") as excinfo:
        read_annotations("brat", tmp_path)
    assert excinfo.value.where == str(tmp_path / "d.txt")


# --- PTC ------------------------------------------------------------------------------------------


def test_readers_ptc_folder():
    documents = read_annotations("ptc", FIXTURES / "ptc")
    assert [d.doc_id for d in documents] == ["article1001", "article1002", "article1003"]
    first = documents[0]
    assert first.spans == [Span(9, 17, "Name_Calling,Labeling", "ptc"), Span(9, 29, "Loaded_Language", "ptc")]
    assert [first.text[s.start:s.end] for s in first.spans] == ["traitors", "traitors and cowards"]


def test_readers_ptc_article_without_or_with_empty_tsv_has_no_spans():
    documents = {d.doc_id: d for d in read_annotations("ptc", FIXTURES / "ptc")}
    assert (documents["article1002"].text, documents["article1002"].spans) == ("A calm report.\n", [])
    assert documents["article1003"].spans == []
    assert documents["article1003"].annotators == ("ptc",)


@pytest.mark.parametrize("name", ["article1001.txt", "article1001.labels.tsv"])
def test_readers_ptc_single_file_takes_its_pair(name):
    documents = read_annotations("ptc", FIXTURES / "ptc" / name)
    assert [(d.doc_id, len(d.spans)) for d in documents] == [("article1001", 2)]


def test_readers_ptc_labels_without_article(tmp_path):
    (tmp_path / "article1.txt").write_text("Text.\n", encoding="utf-8")
    (tmp_path / "article2.labels.tsv").write_text("2\tDoubt\t0\t4\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="no article text article2.txt") as excinfo:
        read_annotations("ptc", tmp_path)
    assert excinfo.value.where == str(tmp_path / "article2.labels.tsv")


def test_readers_ptc_line_for_another_article(tmp_path):
    (tmp_path / "article1.txt").write_text("Text.\n", encoding="utf-8")
    (tmp_path / "article1.labels.tsv").write_text("1\tDoubt\t0\t4\n9\tDoubt\t0\t4\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="line is for article '9', not '1'") as excinfo:
        read_annotations("ptc", tmp_path)
    assert excinfo.value.where == f"{tmp_path / 'article1.labels.tsv'}:2"


@pytest.mark.skipif(not PTC_CORPUS.is_dir(), reason=f"the PTC corpus is not at {PTC_CORPUS}")
def test_readers_ptc_real_corpus():
    # One span of the shipped train split ends past its article (4185 characters): a defect of the data
    # (its last spans do not match this copy of the text), which strict mode must refuse.
    defect = PTC_CORPUS / "train" / "article776368676.labels.tsv"
    with pytest.raises(OffsetError) as excinfo:
        read_annotations("ptc", PTC_CORPUS / "train", labels=None)
    assert excinfo.value.where == f"{defect}:36"
    report = ReadReport()
    train = read_annotations("ptc", PTC_CORPUS / "train", labels=None, strict=False, report=report)
    assert len(train) == 293
    assert report.skipped == [f"[E005] {defect}:36: offsets [4187, 4225) out of range for a text of 4185 characters"]
    spans = [d.text[s.start:s.end] for d in train for s in d.spans]
    assert len(spans) == report.spans > 0
    assert all(span.strip() for span in spans)
    names = set((PTC_CORPUS / "propaganda-techniques-names.txt").read_text(encoding="utf-8").split())
    assert {s.label for d in train for s in d.spans} == names
    assert len(read_annotations("ptc", PTC_CORPUS / "dev", labels=None)) == 57


# --- native ---------------------------------------------------------------------------------------


def test_readers_native_path_referenced_text():
    documents = read_annotations("native", FIXTURES / "native" / "docs.jsonl")
    assert [d.doc_id for d in documents] == ["doc-ref", "doc-inline"]
    ref = documents[0]
    assert (ref.text, ref.source, ref.annotators) == (TEXT, "texts/ref.txt", ("ann-a",))
    assert ref.spans == [Span(0, 27, "prediction", "ann-a")]
    assert ref.checksum == text_checksum(TEXT)
    assert (documents[1].text, documents[1].spans) == ("Own text.\n", [])


def test_readers_native_checksum_mismatch():
    path = FIXTURES / "native" / "bad_checksum.jsonl"
    with pytest.raises(ChecksumMismatchError, match="recorded sha256:0000") as excinfo:
        read_annotations("native", path)
    assert excinfo.value.where == f"{path}:1 (document 'doc-ref')"


def test_readers_native_missing_text_file():
    path = FIXTURES / "native" / "missing_text.jsonl"
    with pytest.raises(AnnotationError, match="text file .*texts/missing.txt: file not found") as excinfo:
        read_annotations("native", path)
    assert excinfo.value.where == f"{path}:1 (document 'doc-ref')"


def test_readers_duplicate_document_across_inputs():
    with pytest.raises(AnnotationError, match="document 'doc1' appears twice"):
        read_annotations("brat", [FIXTURES / "brat", FIXTURES / "brat" / "doc1.ann"])


def test_readers_native_accepts_bom_and_names_bad_utf8_line(tmp_path):
    from stanceclf.errors import AnnotationError
    from stanceclf.data.readers import read_annotations

    good = b'{"doc_id": "a", "text": "Hello there.", "spans": []}\n'
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good)
    assert [d.doc_id for d in read_annotations("native", path)] == ["a"]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(good + b'{"doc_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(AnnotationError, match=r"bad\.jsonl:2: not valid UTF-8"):
        read_annotations("native", bad)


def test_readers_native_rejects_annotators_given_as_a_string(tmp_path):
    from stanceclf.errors import AnnotationError
    from stanceclf.data.readers import read_annotations

    path = tmp_path / "a.jsonl"
    path.write_text('{"doc_id": "a", "text": "Hello there.", "annotators": "ann-a", "spans": []}\n')
    with pytest.raises(AnnotationError, match="'annotators' must be a list"):
        read_annotations("native", path)


def test_readers_native_write_read_round_trip_by_reference(tmp_path):
    from stanceclf.data.documents import AnnotatedDocument, Span
    from stanceclf.data.readers import read_annotations, write_native

    text_file = tmp_path / "texts" / "d1.txt"
    text_file.parent.mkdir()
    text_file.write_bytes("Line one.\r\nLine two 😀 ends.".encode())
    text = text_file.read_bytes().decode()
    doc = AnnotatedDocument("d1", text, [Span(11, 27, "prediction", "me")], ("me",))
    write_native([doc], tmp_path / "out" / "a.jsonl", text_paths={"d1": text_file})
    stored = (tmp_path / "out" / "a.jsonl").read_text()
    assert "Line two" not in stored and '"path": "../texts/d1.txt"' in stored
    (back,) = read_annotations("native", tmp_path / "out" / "a.jsonl", labels=["prediction"])
    assert back.text == text and back.spans == doc.spans and back.annotators == ("me",)
    assert not list((tmp_path / "out").glob("*.tmp"))


@pytest.mark.parametrize("fmt, name, content, where", [
    ("native", "docs.jsonl", '{"doc_id": "a", "text": "tab\there"}\n', ":1"),
    ("label-studio", "export.json", '[{"id": 1, "data": {"text": "tab\there"}}]', ""),
])
def test_readers_bad_json_message_is_whole_with_line_and_column(tmp_path, fmt, name, content, where):
    """json's bare ``msg`` ends mid-sentence ("Invalid control character at"): the message must not."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(fmt, path)
    column = content.index("\t") + 1
    assert f"not valid JSON: Invalid control character at line 1, column {column}" in str(excinfo.value)
    assert excinfo.value.where == f"{path}{where}"


# --- odd structures: a coded error naming the record, or a counted skip in lenient mode (issue 29) ---------------


def read_both_ways(fmt: str, path: Path, **options):
    """The strict read's error, and the lenient read's documents and report."""
    with pytest.raises(AnnotationError) as excinfo:
        read_annotations(fmt, path, **options)
    report = ReadReport()
    documents = read_annotations(fmt, path, strict=False, report=report, **options)
    assert str(excinfo.value) in report.skipped
    return excinfo.value, documents, report


@pytest.mark.parametrize("tasks, where, message", [
    ([{"id": [1], "text": "x"}], "task 0", "the task id [1]: a document id must be a string or an integer, not a list"),
    ([{"id": 1, "data": {"text": "x"}, "annotations": 7}], "task 0 (id 1)", "'annotations' must be a list, got 7"),
    ([{"id": 1, "data": {"text": "x"}, "annotations": [{"result": 5}]}], "task 0 (id 1) annotation 0",
     "'result' must be a list, got 5"),
    ([{"id": 1, "data": {"text": "hello"}, "annotations": [{"result": [
        {"type": "labels", "value": {"start": 0, "end": 5, "text": 5, "labels": ["prediction"]}}]}]}],
     "task 0 (id 1) annotation 0 result 0", "a span's text must be a string, got 5"),
    ([{"id": 1, "data": {"text": "hello", "doc_id": True}, "annotations": []}], "task 0 (id 1)",
     "data.doc_id True: a document id must be a string or an integer, not a boolean"),
    ([{"id": 1, "data": {"text": "hello"}, "annotations": [{"completed_by": [2], "result": []}]}],
     "task 0 (id 1) annotation 0", "the annotator's user id must be a string or an integer, got [2]"),
])
def test_readers_label_studio_odd_structures_are_coded_errors_naming_the_task(tmp_path, tasks, where, message):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    error, documents, report = read_both_ways("label-studio", path)
    assert error.where == f"{path} {where}" and message in error.detail and str(error).startswith("[E00")


def test_readers_label_studio_undetectable_text_field_is_skipped_in_lenient_mode(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"id": 1, "data": {"a": "x", "b": "y"}, "annotations": [{"result": []}]}]))
    error, documents, report = read_both_ways("label-studio", path)
    assert "document text field cannot be told" in str(error) and documents == []


def test_readers_brat_reversed_discontinuous_fragments_are_offset_errors(tmp_path):
    (tmp_path / "x.txt").write_text("hello world", encoding="utf-8")
    (tmp_path / "x.ann").write_text("T1\tprediction 1 1;1 0\t\n", encoding="utf-8")
    error, documents, report = read_both_ways("brat", tmp_path)
    assert isinstance(error, OffsetError) and error.where == f"{tmp_path / 'x.ann'}:1 fragment 0"
    assert len(report.skipped) == 2 and "reversed offsets: start 1 > end 0" in report.skipped[1]
    assert [d.spans for d in documents] == [[]]


@pytest.mark.parametrize("fmt, name, line", [
    ("native", "docs.jsonl", '{"doc_id": "a", "text": "bad \\ud800 text"}'),
    ("native", "docs.jsonl", '{"doc_id": "a", "text": "bad \\ud800 text", "checksum": "sha256:0"}'),
    ("doccano", "docs.jsonl", '{"id": 1, "text": "bad \\ud800 text", "label": []}'),
    ("label-studio", "export.json",
     '[{"id": 1, "data": {"text": "bad \\ud800 text"}, "annotations": [{"result": []}]}]'),
])
def test_readers_text_with_an_unpaired_surrogate_is_a_coded_error_naming_the_record(tmp_path, fmt, name, line):
    path = tmp_path / name
    path.write_text(line + "\n", encoding="utf-8")
    error, documents, report = read_both_ways(fmt, path)
    assert "text is not valid Unicode: an unpaired surrogate at character 4" in str(error)
    assert error.where.startswith(f"{path}:1" if name.endswith(".jsonl") else f"{path} task 0")
    assert documents == [] and report.documents == 0


@pytest.mark.parametrize("fmt, name, content, message", [
    ("native", "docs.jsonl", '{"doc_id": "a", "text": "x", "n": ' + "9" * 5000 + "}\n",
     "more digits than Python reads"),
    ("doccano", "docs.jsonl", "[" * 100_000 + "\n", "nested too deeply"),
    ("label-studio", "export.json", "[" * 100_000, "nested too deeply"),
    ("label-studio", "export.json", "[" + "9" * 5000 + "]", "more digits than Python reads"),
])
def test_readers_huge_integers_and_deep_nesting_are_coded_errors(tmp_path, fmt, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    error, documents, report = read_both_ways(fmt, path)
    assert message in str(error) and error.where.startswith(str(path))


def test_readers_native_span_annotator_and_checksum_must_be_strings(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"doc_id": "a", "text": "Hello.", "spans": [
        {"start": 0, "end": 5, "label": "prediction", "annotator": ["me"]}]}) + "\n"
        + json.dumps({"doc_id": "b", "text": "Hello.", "checksum": [1]}) + "\n", encoding="utf-8")
    error, documents, report = read_both_ways("native", path)
    assert error.where == f"{path}:1 (document 'a') span 0" and "'annotator' must be a name, got ['me']" in str(error)
    assert report.skipped[1] == f"[E002] {path}:2 (document 'b'): 'checksum' must be a string, got [1]"


@pytest.mark.parametrize("name", ["doc.txt\x00", "\ud800.txt"])
def test_readers_native_path_no_file_can_have_is_a_coded_error(tmp_path, name):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"doc_id": "a", "path": name}) + "\n", encoding="utf-8")
    error, _, _ = read_both_ways("native", path)
    assert error.where == f"{path}:1 (document 'a')" and "not a usable file name" in str(error)


# --- document ids: strings or integers, an integer as its decimal string, "1" and 1 one id (issue 29) ----------


@pytest.mark.parametrize("raw, kind", [(["f"], "a list"), (True, "a boolean"), (1.5, "a number with a fraction"),
                                       ({"a": 1}, "an object"), ("", "")])
def test_readers_doccano_id_must_be_a_string_or_an_integer(tmp_path, raw, kind):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": raw, "text": "Hello.", "label": []}) + "\n", encoding="utf-8")
    error, documents, _ = read_both_ways("doccano", path)
    assert error.where == f"{path}:1" and f"'id' {raw!r}: a document id must" in str(error)
    assert kind in str(error) and documents == []


def test_readers_doccano_integer_id_is_its_decimal_string_and_meets_the_string(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": doc_id, "text": "Hello.", "label": []}) + "\n"
                            for doc_id in (12345678901234567890, 1, "1")), encoding="utf-8")
    error, documents, _ = read_both_ways("doccano", path)
    assert [d.doc_id for d in documents] == ["12345678901234567890", "1"]
    assert error.where == f"{path}:3 (document '1')" and f"first at {path}:2 (document '1')" in str(error)
    assert "appears twice" in str(error)


def test_readers_label_studio_string_and_integer_task_ids_are_one_id_named_twice(tmp_path):
    path = tmp_path / "export.json"
    tasks = [{"id": task_id, "data": {"text": "Hello."}, "annotations": [{"result": []}]} for task_id in (1, "1")]
    path.write_text(json.dumps(tasks), encoding="utf-8")
    error, documents, _ = read_both_ways("label-studio", path)
    assert error.where == f"{path} task 1 (id 1)" and f"first at {path} task 0 (id 1)" in str(error)
    assert [d.doc_id for d in documents] == ["1"]


def test_readers_sheet_texts_with_one_name_are_an_error_naming_both(tmp_path):
    from stanceclf.data.sheets import sheet_text_files

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.txt").write_text("Hello.", encoding="utf-8")
    assert sheet_text_files([tmp_path / "a"]) == {"x": tmp_path / "a" / "x.txt"}
    with pytest.raises(AnnotationError, match=r"document id 'x' \(first .*a/x\.txt\)") as excinfo:
        sheet_text_files([tmp_path / "a", tmp_path / "b"])
    assert excinfo.value.where == str(tmp_path / "b" / "x.txt")
