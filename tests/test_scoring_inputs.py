"""Scoring inputs: the document id of each record (text folders, JSONL, CSV, Parquet); text that cannot be scored."""

from __future__ import annotations

import json

import pytest

from stanceclf.errors import InputRecordError, StanceclfError, TextInputError
from stanceclf.data.corpus_inputs import Fields, iter_records

TEXT = "NATO will expand next year. Moscow warned of consequences."


def ids_and_errors(*paths, **kwargs) -> list[tuple[str, str | None]]:
    return [(record.doc_id, record.error) for record in iter_records(list(paths), **kwargs)]


# ---- text folders -------------------------------------------------------------------------------------------


def test_scoring_inputs_folder_of_distinct_names_keeps_its_ids_without_suffix(tmp_path):
    (tmp_path / "news").mkdir()
    for name in ("news/a.txt", "b.TEXT", "c.text"):
        (tmp_path / name).write_text(TEXT, encoding="utf-8")
    assert ids_and_errors(tmp_path) == [("b", None), ("c", None), ("news/a", None)]
    assert ids_and_errors(tmp_path / "news" / "a.txt") == [("a", None)]


def test_scoring_inputs_folder_files_differing_only_in_suffix_keep_their_suffix(tmp_path):
    for name in ("a.txt", "a.text", "a.TXT", "a.txt.txt", "b.txt"):
        (tmp_path / name).write_text(TEXT, encoding="utf-8")
    records = list(iter_records([tmp_path]))
    assert {r.doc_id: r.where.removeprefix(f"{tmp_path}/") for r in records} == {
        "a.TXT": "a.TXT", "a.text": "a.text", "a.txt": "a.txt", "a.txt.txt": "a.txt.txt", "b": "b.txt"}
    assert all(r.error is None for r in records)


# ---- structured records -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, kind", [(["f"], "a list"), (True, "a boolean"), (False, "a boolean"),
                                       (1.5, "a number with a fraction"), ({"a": 1}, "an object")])
def test_scoring_inputs_jsonl_id_that_is_not_a_string_or_integer_is_a_bad_record(tmp_path, raw, kind):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": raw, "text": TEXT}) + "\n", encoding="utf-8")
    ((doc_id, error),) = ids_and_errors(source)
    assert doc_id == "in:1"
    assert error == f"id field 'id': a document id must be a string or an integer, not {kind} ({raw!r})"


def test_scoring_inputs_jsonl_integer_id_is_its_decimal_string(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": TEXT}) + "\n" for i in (7, -3, 10**30)), encoding="utf-8")
    assert ids_and_errors(source) == [("7", None), ("-3", None), (str(10**30), None)]


def test_scoring_inputs_empty_id_is_an_absent_one(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text(f"id,text\n,{TEXT}\nx,{TEXT}\n", encoding="utf-8")
    assert ids_and_errors(source) == [("in:2", None), ("x", None)]
    ((_, error), _) = ids_and_errors(source, fields=Fields(id_field="id"))
    assert error.startswith("missing id field 'id'")


def test_scoring_inputs_parquet_bytes_or_float_id_is_a_bad_record(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, ids in (("bytes", [b"a"]), ("float", [1.0])):
        pq.write_table(pa.table({"id": ids, "text": [TEXT]}), tmp_path / f"{name}.parquet")
    assert [error for _, error in ids_and_errors(tmp_path / "bytes.parquet", tmp_path / "float.parquet")] == [
        "id field 'id': a document id must be a string or an integer, not bytes (b'a')",
        "id field 'id': a document id must be a string or an integer, not a number with a fraction (1.0)"]


@pytest.mark.parametrize("line", ['{"id": 1, "n": ' + "9" * 5000 + "}", "[" * 100_000])
def test_scoring_inputs_jsonl_huge_integer_or_deep_nesting_is_a_bad_record(tmp_path, line):
    source = tmp_path / "in.jsonl"
    source.write_text(line + "\n" + json.dumps({"id": "ok", "text": TEXT}) + "\n", encoding="utf-8")
    (bad, good) = ids_and_errors(source)
    assert bad[1].startswith("not usable JSON: ") and good == ("ok", None)


# ---- duplicates across a run ------------------------------------------------------------------------------------


def test_scoring_inputs_string_and_integer_of_one_id_are_a_duplicate_naming_both(tmp_path, make_tiny_model):
    from stanceclf.infer.scoring import score_corpus

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 1, "text": TEXT}) + "\n" + json.dumps({"id": "1", "text": TEXT}) + "\n",
                      encoding="utf-8")
    with pytest.raises(InputRecordError, match=rf"record 1 \({source}:2, id '1'\): duplicate document id '1' "
                                               rf"\(first at {source}:1\)"):
        score_corpus([source], tmp_path / "o.jsonl", make_tiny_model(), progress=False)


def test_scoring_inputs_duplicate_of_two_folders_does_not_point_at_id_field(tmp_path, make_tiny_model):
    from stanceclf.infer.scoring import score_corpus

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.txt").write_text(TEXT, encoding="utf-8")
    with pytest.raises(InputRecordError) as excinfo:
        score_corpus([tmp_path / "a", tmp_path / "b"], tmp_path / "o.jsonl", make_tiny_model(), progress=False)
    assert "duplicate document id 'x'" in str(excinfo.value) and "path below the folder" in str(excinfo.value)


# ---- classify: text that is not valid Unicode -------------------------------------------------------------------


def test_scoring_inputs_classify_text_with_unpaired_surrogate_is_a_coded_value_error(make_tiny_model):
    model = make_tiny_model()
    with pytest.raises(TextInputError) as excinfo:
        model.classify(["Fine text.", "bad \ud800"])
    assert isinstance(excinfo.value, ValueError) and isinstance(excinfo.value, StanceclfError)
    assert str(excinfo.value) == "[E033] input 1 is not valid Unicode: an unpaired surrogate at character 4"
