"""From annotated documents to the sentence dataset: labels from spans, document-grouped splits, saving, CLI."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from stanceclf.data.dataset import (BuildConfig, assign_splits, build_dataset, data_fingerprint, format_statistics,
                               load_built_dataset, save_dataset, sentence_examples, statistics)
from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.errors import BuildOptionError, StanceclfError
from stanceclf.data.schema import LabelSchema, load_schema

FIXTURES = Path(__file__).parent / "fixtures" / "annotations"
TEXT = "Prices will rise next year. The minister blamed the bank.\n"
CLAIMS = load_schema("claim-types")  # prediction, threat_framing, policy_attribution
RATIOS = {"train": 0.8, "dev": 0.1, "test": 0.1}


def at(text: str, phrase: str) -> tuple[int, int]:
    start = text.index(phrase)
    return start, start + len(phrase)


def labels_of(document: AnnotatedDocument, schema: LabelSchema = CLAIMS, **config) -> list[tuple[str, list[int]]]:
    return [(e["text"], e["labels"]) for e in sentence_examples(document, schema, BuildConfig(**config))]


# --- spans to sentence labels ---------------------------------------------------------------------


def test_dataset_span_inside_one_sentence_labels_only_that_sentence():
    doc = AnnotatedDocument("d", TEXT, [Span(*at(TEXT, "will rise"), "prediction")])
    assert labels_of(doc) == [("Prices will rise next year.", [1, 0, 0]),
                              ("The minister blamed the bank.", [0, 0, 0])]


def test_dataset_span_crossing_sentence_boundary_labels_both_sentences():
    doc = AnnotatedDocument("d", TEXT, [Span(*at(TEXT, "next year. The minister"), "policy_attribution")])
    assert labels_of(doc) == [("Prices will rise next year.", [0, 0, 1]),
                              ("The minister blamed the bank.", [0, 0, 1])]


def test_dataset_min_overlap_chars_larger_than_overlap_does_not_label():
    # "year. The": 5 characters in the first sentence ("year."), 3 in the second ("The").
    doc = AnnotatedDocument("d", TEXT, [Span(*at(TEXT, "year. The"), "prediction")])
    assert [hot for _, hot in labels_of(doc, min_overlap_chars=3)] == [[1, 0, 0], [1, 0, 0]]
    assert [hot for _, hot in labels_of(doc, min_overlap_chars=4)] == [[1, 0, 0], [0, 0, 0]]
    assert [hot for _, hot in labels_of(doc, min_overlap_chars=6)] == [[0, 0, 0], [0, 0, 0]]


def test_dataset_min_overlap_fraction_of_the_sentence():
    doc = AnnotatedDocument("d", TEXT, [Span(*at(TEXT, "year. The minister"), "prediction")])
    # 5 of 27 characters (0.19) of the first sentence, 12 of 29 (0.41) of the second.
    assert [hot for _, hot in labels_of(doc, min_overlap_fraction=0.3)] == [[0, 0, 0], [1, 0, 0]]
    assert [hot for _, hot in labels_of(doc, min_overlap_fraction=0.1)] == [[1, 0, 0], [1, 0, 0]]


def test_dataset_span_touching_only_whitespace_between_sentences_labels_nothing():
    start = TEXT.index(". The") + 1
    doc = AnnotatedDocument("d", TEXT, [Span(start, start + 1, "prediction")])
    assert [hot for _, hot in labels_of(doc)] == [[0, 0, 0], [0, 0, 0]]


def test_dataset_overlapping_spans_of_two_labels_give_multi_hot():
    doc = AnnotatedDocument("d", TEXT, [Span(*at(TEXT, "Prices will rise"), "prediction"),
                                        Span(*at(TEXT, "will rise next year"), "threat_framing"),
                                        Span(*at(TEXT, "minister blamed"), "policy_attribution"),
                                        Span(*at(TEXT, "the bank"), "threat_framing")])
    assert [hot for _, hot in labels_of(doc)] == [[1, 1, 0], [0, 1, 1]]


def test_dataset_labels_follow_schema_order():
    reversed_schema = LabelSchema.from_labels(["policy_attribution", "threat_framing", "prediction"])
    doc = AnnotatedDocument("d", TEXT, [Span(*at(TEXT, "will rise"), "prediction")])
    assert [hot for _, hot in labels_of(doc, reversed_schema)] == [[0, 0, 1], [0, 0, 0]]


def test_dataset_document_without_spans_is_all_negative():
    text = "Headline\nOne sentence. Another one.\n\nA third paragraph here."
    examples = sentence_examples(AnnotatedDocument("empty", text), CLAIMS, BuildConfig())
    assert [e["text"] for e in examples] == ["Headline", "One sentence.", "Another one.", "A third paragraph here."]
    assert all(e["labels"] == [0, 0, 0] for e in examples)


def test_dataset_empty_document_is_split_without_error():
    documents = [AnnotatedDocument(f"d{i}", TEXT, [Span(*at(TEXT, "Prices will rise"), "prediction", "t")], ("t",))
                 for i in range(8)] + [AnnotatedDocument("empty", "", [], ("t",))]
    dataset, _ = build_dataset(documents, CLAIMS, BuildConfig(split_ratios=RATIOS))
    assert sum(len(dataset[split]) for split in dataset) == 16


def test_dataset_duplicate_document_ids_are_an_error():
    from stanceclf.errors import AnnotationError

    docs = [AnnotatedDocument(f"d{i}", TEXT, [], ("t",)) for i in range(4)]
    with pytest.raises(AnnotationError, match=r"\[E002\].*'d1' occurs twice \(in train and in dev\)"):
        build_dataset([], CLAIMS, BuildConfig(), fixed_splits={"train": docs, "dev": docs[1:2]})
    with pytest.raises(AnnotationError, match=r"'d0' occurs twice \(both in input\)"):
        build_dataset(docs + docs[:1], CLAIMS, BuildConfig(split_ratios=RATIOS))


def test_dataset_fingerprint_of_fixed_splits_records_membership():
    docs = [AnnotatedDocument(f"d{i}", TEXT, [], ("t",)) for i in range(4)]
    _, a = build_dataset([], CLAIMS, BuildConfig(), fixed_splits={"train": docs[:3], "dev": docs[3:]})
    _, b = build_dataset([], CLAIMS, BuildConfig(), fixed_splits={"train": docs[1:], "dev": docs[:1]})
    assert a["fingerprint"] != b["fingerprint"]


def test_dataset_example_fields_and_offsets():
    doc = AnnotatedDocument("d", TEXT, [Span(0, 6, "prediction")])
    examples = sentence_examples(doc, CLAIMS, BuildConfig())
    assert [(e["doc_id"], e["sentence_index"], e["start"], e["end"]) for e in examples] == [
        ("d", 0, 0, 27), ("d", 1, 28, 57)]
    assert all(TEXT[e["start"]:e["end"]] == e["text"] for e in examples)


# --- document-grouped splits ----------------------------------------------------------------------

RARE_SCHEMA = LabelSchema.from_labels(["common", "rare"])


def synthetic_documents(n: int = 40, seed: int = 0) -> list[AnnotatedDocument]:
    """``n`` documents of 4-12 sentences; "common" on ~30% of sentences; "rare" on one sentence of every
    third document and a second one of every ninth (19 positives for 40 documents, at most 2 per document)."""
    rng = random.Random(seed)
    documents = []
    for d in range(n):
        text, spans = "", []
        n_sentences = rng.randint(4, 12)
        rare_at = set(rng.sample(range(n_sentences), (d % 3 == 0) + (d % 9 == 0)))
        for k in range(n_sentences):
            sentence = f"Sentence {k} of document {d} says something."
            start = len(text)
            text += sentence + ("\n" if rng.random() < 0.3 else " ")
            if rng.random() < 0.3:
                spans.append(Span(start, start + 8, "common"))
            if k in rare_at:
                spans.append(Span(start + 9, start + len(sentence), "rare"))
        documents.append(AnnotatedDocument(f"doc{d:02d}", text, sorted(spans)))
    return documents


@pytest.fixture(scope="module")
def synthetic():
    documents = synthetic_documents()
    by_doc = {d.doc_id: sentence_examples(d, RARE_SCHEMA, BuildConfig()) for d in documents}
    return documents, by_doc


def test_dataset_synthetic_fixture_shape(synthetic):
    documents, by_doc = synthetic
    assert len(documents) == 40
    assert sum(e["labels"][1] for ex in by_doc.values() for e in ex) == 19
    assert max(sum(e["labels"][1] for e in ex) for ex in by_doc.values()) == 2


def test_dataset_assign_splits_each_document_in_exactly_one_split(synthetic):
    documents, _ = synthetic
    dataset, info = build_dataset(documents, RARE_SCHEMA, BuildConfig(split_ratios=RATIOS))
    per_split = {name: set(dataset[name]["doc_id"]) for name in dataset}
    assert set(per_split) == {"train", "dev", "test"}
    names = list(per_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert per_split[a].isdisjoint(per_split[b]), f"{a} and {b} share documents"
    assert set().union(*per_split.values()) == {d.doc_id for d in documents}
    assert {name: sorted(ids) for name, ids in per_split.items()} == info["documents"]
    # Whole documents: every sentence of a document is in its split.
    lengths = {d.doc_id: len(ex) for d, ex in zip(documents, [sentence_examples(d, RARE_SCHEMA, BuildConfig())
                                                                for d in documents])}
    for name in dataset:
        counts = {}
        for doc_id in dataset[name]["doc_id"]:
            counts[doc_id] = counts.get(doc_id, 0) + 1
        assert all(counts[d] == lengths[d] for d in counts)


def test_dataset_assign_splits_deterministic_for_a_seed(synthetic):
    _, by_doc = synthetic
    first = assign_splits(by_doc, RATIOS, seed=13)
    assert first == assign_splits(by_doc, RATIOS, seed=13)
    assert first == assign_splits(dict(reversed(list(by_doc.items()))), RATIOS, seed=13)  # input order is irrelevant
    assert set(first) == set(by_doc) and set(first.values()) == set(RATIOS)


def test_dataset_assign_splits_differs_for_another_seed(synthetic):
    _, by_doc = synthetic
    assert assign_splits(by_doc, RATIOS, seed=13) != assign_splits(by_doc, RATIOS, seed=14)


@pytest.mark.parametrize("seed", range(6))
def test_dataset_assign_splits_keeps_rare_label_share_near_ratio(synthetic, seed):
    """Tolerance: documents are indivisible, so a split can only be filled to the nearest document. A
    split other than the largest may overshoot its quota of the rare label by at most what one document
    holds (``max_doc`` positives, here 2 of 19): once above quota it is no longer the split in most need.
    The largest split absorbs the small splits' overshoot, so it may fall short by ``(k - 1) * max_doc``
    for ``k`` splits. The same argument holds for sentences. A random document split regularly leaves a
    small split with no rare positive at all, or with several times its share."""
    _, by_doc = synthetic
    assignment = assign_splits(by_doc, RATIOS, seed=seed)
    rare = {d: sum(e["labels"][1] for e in ex) for d, ex in by_doc.items()}
    sentences = {d: len(ex) for d, ex in by_doc.items()}
    for per_doc in (rare, sentences):
        total, max_doc = sum(per_doc.values()), max(per_doc.values())
        for split, ratio in RATIOS.items():
            got = sum(n for d, n in per_doc.items() if assignment[d] == split)
            tolerance = (len(RATIOS) - 1) * max_doc if split == "train" else max_doc
            assert abs(got - ratio * total) <= tolerance, (split, got, ratio * total)
            assert got > 0, f"{split} got none"


def test_dataset_assign_splits_single_split_and_zero_ratio(synthetic):
    _, by_doc = synthetic
    assert set(assign_splits(by_doc, {"train": 1.0}, seed=1).values()) == {"train"}
    assert set(assign_splits(by_doc, {"train": 0.9, "dev": 0.1, "test": 0.0}, seed=1).values()) == {"train", "dev"}


def test_dataset_build_config_rejects_bad_ratios():
    with pytest.raises(ValueError, match="sum to 1"):
        BuildConfig(split_ratios={"train": 0.8, "dev": 0.1})
    with pytest.raises(ValueError, match="unknown split names"):
        BuildConfig(split_ratios={"train": 0.8, "validation": 0.2})


def test_dataset_build_with_fixed_splits():
    a = AnnotatedDocument("a", TEXT, [Span(*at(TEXT, "will rise"), "prediction")])
    b = AnnotatedDocument("b", "Nothing happens.\n")
    c = AnnotatedDocument("c", "The bank is a threat. Really.\n", [Span(4, 8, "threat_framing")])
    dataset, info = build_dataset([], CLAIMS, fixed_splits={"train": [a, b], "dev": [c]})
    assert list(dataset) == ["train", "dev"]
    assert dataset["train"]["doc_id"] == ["a", "a", "b"]
    assert dataset["train"]["labels"] == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert dataset["dev"]["text"] == ["The bank is a threat.", "Really."]
    assert dataset["dev"]["labels"] == [[0, 1, 0], [0, 0, 0]]
    assert info["documents"] == {"train": ["a", "b"], "dev": ["c"]}
    assert info["fingerprint"] == data_fingerprint([a, b, c], CLAIMS, BuildConfig(),
                                                   fixed_splits={"train": [a, b], "dev": [c]})
    assert info["schema"] == CLAIMS.to_dict()


def test_dataset_statistics_rows():
    a = AnnotatedDocument("a", TEXT, [Span(*at(TEXT, "will rise"), "prediction"),
                                      Span(*at(TEXT, "blamed"), "policy_attribution")])
    c = AnnotatedDocument("c", "The bank is a threat. Really.\n", [Span(4, 8, "threat_framing")])
    dataset, _ = build_dataset([], CLAIMS, fixed_splits={"train": [a], "dev": [c]})
    assert statistics(dataset, CLAIMS) == [
        {"split": "train", "documents": 1, "sentences": 2, "prediction": 1, "threat_framing": 0,
         "policy_attribution": 1},
        {"split": "dev", "documents": 1, "sentences": 2, "prediction": 0, "threat_framing": 1,
         "policy_attribution": 0},
    ]


def test_dataset_save_and_load_round_trip(tmp_path, synthetic):
    documents, _ = synthetic
    dataset, info = build_dataset(documents, RARE_SCHEMA, BuildConfig(split_ratios=RATIOS, seed=3))
    out = save_dataset(dataset, info, RARE_SCHEMA, tmp_path / "built", export=("jsonl", "parquet"))
    loaded, loaded_info = load_built_dataset(out)
    assert list(loaded) == list(dataset)
    for name in dataset:
        assert loaded[name].to_list() == dataset[name].to_list()
        assert len(loaded[name]) > 0
    rows = statistics(dataset, RARE_SCHEMA)
    assert loaded_info == {**info, "statistics": rows}
    assert BuildConfig.model_validate(loaded_info["build_config"]) == BuildConfig(split_ratios=RATIOS, seed=3)
    assert LabelSchema.from_dict(loaded_info["schema"]) == RARE_SCHEMA
    assert (out / "statistics.md").read_text(encoding="utf-8") == format_statistics(rows) + "\n"
    assert "| split | documents | sentences | common | rare |" in (out / "statistics.md").read_text(encoding="utf-8")
    import pandas as pd

    for name in dataset:
        jsonl = [json.loads(line) for line in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert jsonl == dataset[name].to_list()
        parquet = pd.read_parquet(out / f"{name}.parquet")
        assert parquet["doc_id"].tolist() == dataset[name]["doc_id"]
        assert [list(hot) for hot in parquet["labels"]] == dataset[name]["labels"]


def test_dataset_save_with_an_empty_split(tmp_path):
    doc = AnnotatedDocument("only", TEXT, [Span(0, 6, "prediction")])
    dataset, info = build_dataset([doc], CLAIMS)
    assert [len(dataset[name]) for name in dataset] == [2, 0, 0]
    out = save_dataset(dataset, info, CLAIMS, tmp_path / "built", export=("jsonl", "parquet"))
    loaded, _ = load_built_dataset(out)
    assert [len(loaded[name]) for name in loaded] == [2, 0, 0]
    assert (out / "test.jsonl").read_text(encoding="utf-8") == ""


def test_dataset_save_rejects_unknown_export(tmp_path):
    dataset, info = build_dataset([AnnotatedDocument("d", TEXT)], CLAIMS)
    with pytest.raises(BuildOptionError, match=r"^\[E007\] unknown export format 'csv'"):
        save_dataset(dataset, info, CLAIMS, tmp_path / "built", export=("csv",))
    assert not (tmp_path / "built").exists()  # refused before anything is written


def test_dataset_load_from_a_folder_that_is_not_a_built_dataset(tmp_path):
    with pytest.raises(StanceclfError, match="build.json is missing"):
        load_built_dataset(tmp_path)


def test_dataset_fingerprint_changes_when_a_span_changes():
    doc = AnnotatedDocument("d", TEXT, [Span(0, 16, "prediction")])
    base = data_fingerprint([doc], CLAIMS, BuildConfig())
    assert base.startswith("sha256:")
    assert base == data_fingerprint([AnnotatedDocument("d", TEXT, [Span(0, 16, "prediction")])], CLAIMS,
                                    BuildConfig())
    for spans in ([Span(0, 17, "prediction")], [Span(1, 16, "prediction")], [Span(0, 16, "threat_framing")],
                  [], [Span(0, 16, "prediction"), Span(20, 25, "prediction")]):
        assert data_fingerprint([AnnotatedDocument("d", TEXT, spans)], CLAIMS, BuildConfig()) != base, spans


def test_dataset_fingerprint_depends_on_text_schema_and_config_not_order():
    a = AnnotatedDocument("a", TEXT, [Span(0, 16, "prediction")])
    b = AnnotatedDocument("b", "Other text.\n")
    base = data_fingerprint([a, b], CLAIMS, BuildConfig())
    assert data_fingerprint([b, a], CLAIMS, BuildConfig()) == base
    assert data_fingerprint([a, AnnotatedDocument("b", "Other text!\n")], CLAIMS, BuildConfig()) != base
    assert data_fingerprint([a, b], CLAIMS, BuildConfig(min_overlap_chars=2)) != base
    assert data_fingerprint([a, b], load_schema("ptc-propaganda"), BuildConfig()) != base


# --- the build-dataset command --------------------------------------------------------------------


def run_cli(args: list[str]):
    from typer.testing import CliRunner

    from stanceclf.cli import app

    # A wide terminal, so that the help text is not wrapped.
    return CliRunner().invoke(app, args, env={"COLUMNS": "1000", "NO_COLOR": "1"})


def test_dataset_cli_build_dataset_native_fixture(tmp_path):
    out = tmp_path / "built"
    result = run_cli(["build-dataset", str(FIXTURES / "native" / "docs.jsonl"), "--out", str(out),
                      "--export", "jsonl,parquet"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert (out / "dataset" / "dataset_dict.json").exists()
    for name in ("train", "dev", "test"):
        assert (out / f"{name}.jsonl").exists() and (out / f"{name}.parquet").exists()
    # Read back through the exports and build.json: load_built_dataset fails on this folder, whose test split
    # is empty (see test_dataset_save_with_an_empty_split).
    info = json.loads((out / "build.json").read_text(encoding="utf-8"))
    rows = {(r["doc_id"], r["text"]): r["labels"] for name in info["documents"]
            for r in map(json.loads, (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines())}
    assert rows == {("doc-ref", "Prices will rise next year."): [1, 0, 0],
                    ("doc-ref", "The minister blamed the bank."): [0, 0, 0],
                    ("doc-inline", "Own text."): [0, 0, 0]}
    assert info["schema"]["name"] == "claim-types"
    stats = (out / "statistics.md").read_text(encoding="utf-8")
    assert stats.startswith("| split | documents | sentences | prediction | threat_framing | policy_attribution |")
    assert sum(row["sentences"] for row in info["statistics"]) == 3
    assert sum(row["prediction"] for row in info["statistics"]) == 1


def test_dataset_cli_build_dataset_bad_input_fails_cleanly(tmp_path):
    result = run_cli(["build-dataset", str(FIXTURES / "native" / "bad_checksum.jsonl"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "[E003]" in result.output
    assert not (tmp_path / "x" / "build.json").exists()


def test_dataset_cli_build_dataset_help_names_every_format():
    from stanceclf.data.readers import FORMATS

    result = run_cli(["build-dataset", "--help"])
    assert result.exit_code == 0
    for name in FORMATS:
        assert f"'{name}'" in result.output, name


def test_dataset_cli_build_dataset_help_shows_format_descriptions_intact():
    from stanceclf.data.readers import FORMATS

    output = " ".join(re.sub(r"[│╭╮╰╯─]", " ", run_cli(["build-dataset", "--help"]).output).split())
    for name, description in FORMATS.items():
        assert " ".join(description.split()) in output, name


@pytest.mark.parametrize("options, expected", [
    (["--format", "nope"], "[E007] --format: unknown format 'nope'; supported: ['brat', 'doccano'"),
    (["--split", "foo=1"], "[E007] --split: unknown split names ['foo']; use ['train', 'dev', 'test']"),
    (["--split", "train=x"], "[E007] --split: split ratios must look like train=0.7,dev=0.15,test=0.15"),
    (["--split", "train=nan"], "[E007] --split: split ratios must be non-negative and sum to 1"),
    (["--min-overlap", "0"], "[E007] --min-overlap: Input should be greater than or equal to 1"),
    (["--reader-option", "colour=red"], "[E007] --reader-option: the native reader has no option 'colour'"),
    (["--reader-option", "colour"], "[E007] --reader-option: reader option 'colour' must look like KEY=VALUE"),
    (["--map", "prediction"], "[E007] --map: label mapping 'prediction' must look like RAW=LABEL"),
    (["--export", "csv"], "[E007] --export: unknown export format 'csv'"),
])
def test_dataset_cli_build_dataset_bad_option_is_a_coded_error_naming_it(tmp_path, options, expected):
    result = run_cli(["build-dataset", str(FIXTURES / "native" / "docs.jsonl"), "--out", str(tmp_path / "x"), *options])
    assert result.exit_code == 1 and isinstance(result.exception, (SystemExit, type(None)))
    assert result.output.startswith(expected), result.output
    assert "validation error" not in result.output and "pydantic" not in result.output
    assert not (tmp_path / "x").exists()


def test_dataset_cli_build_dataset_text_with_an_unpaired_surrogate_names_file_and_line(tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_text('{"id": 1, "text": "Fine text.", "label": []}\n'
                      '{"id": 2, "text": "bad \\ud800 text", "label": []}\n', encoding="utf-8")
    result = run_cli(["build-dataset", str(source), "--format", "doccano", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.output.startswith(
        f"[E002] {source}:2 (document '2'): the text is not valid Unicode: an unpaired surrogate at character 4")
    lenient = run_cli(["build-dataset", str(source), "--format", "doccano", "--out", str(tmp_path / "y"), "--lenient"])
    assert lenient.exit_code == 0 and "read 1 documents with 0 spans" in lenient.output
    assert f"skipped 1 items:\n  [E002] {source}:2 (document '2')" in lenient.output


@pytest.mark.parametrize("task", [{"id": [1], "text": "x"}, {"id": 1, "data": {"text": "x"}, "annotations": 7},
                                  {"id": 1, "data": {"text": "x"}, "annotations": [{"result": 5}]}])
def test_dataset_cli_build_dataset_odd_label_studio_task_is_skipped_and_counted_when_lenient(tmp_path, task):
    source = tmp_path / "export.json"
    good = {"id": 2, "data": {"text": "Prices will rise."}, "annotations": [{"result": []}]}
    source.write_text(json.dumps([task, good]), encoding="utf-8")
    strict = run_cli(["build-dataset", str(source), "--format", "label-studio", "--out", str(tmp_path / "x")])
    assert strict.exit_code == 1 and strict.output.startswith(f"[E002] {source} task 0"), strict.output
    lenient = run_cli(["build-dataset", str(source), "--format", "label-studio", "--out", str(tmp_path / "y"),
                       "--lenient"])
    assert lenient.exit_code == 0, lenient.output
    assert "read 1 documents with 0 spans" in lenient.output and f"  [E002] {source} task 0" in lenient.output
