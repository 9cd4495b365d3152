"""Property-based tests: every annotation reader, and build-dataset, on structurally odd files.

Whatever a file holds (wrong types at every level, missing keys, odd offsets, odd Unicode with unpaired
surrogates, huge integers, deep nesting, bytes that are not UTF-8), reading it either gives documents or
fails with a coded StanceclfError that names the input; a lenient read never raises, and the error a
strict read stops at is among the items the lenient read skipped and counted.

The suite runs a bounded number of examples, the same ones every run (derandomized, so CI is stable).
``STANCECLF_FUZZ_EXAMPLES=N`` runs N fresh random examples per reader test instead (N/20 for the slower
build-dataset test); ``--hypothesis-show-statistics`` prints how many ran (benchmarks/results/fuzz-readers.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stanceclf.data.readers import FORMATS, ReadReport, read_annotations
from stanceclf.data.schema import load_schema
from stanceclf.errors import StanceclfError

LABELS = load_schema("claim-types").label_names
BIG_RUN = int(os.environ.get("STANCECLF_FUZZ_EXAMPLES", "0"))
CODED = re.compile(r"\[E\d{3}\] ")


def fuzz_settings(examples: int, *, big_run_share: int = 1):
    """``examples`` fixed examples in the suite; a big run's count (divided by ``big_run_share``) of random ones."""
    common = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
    if BIG_RUN:
        return settings(max_examples=max(1, BIG_RUN // big_run_share), derandomize=False, **common)
    return settings(max_examples=examples, derandomize=True, **common)


def weighted(strategy, weight: int, *others):
    """``strategy`` ``weight`` times as likely as each of ``others``: a problem deep in a file is found only
    when the levels above it are mostly right."""
    # one_of(s, s, s, t) draws s and t evenly: it is the choice of a branch number that must be weighted.
    branches = [strategy] * weight + list(others)
    return st.sampled_from(range(len(branches))).flatmap(branches.__getitem__)


# ---- odd values ------------------------------------------------------------------------------------------------

MISSING = object()


class Raw(str):
    """A JSON fragment written as it is: what ``json.dumps`` cannot write (huge integers, deep nesting)."""


SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
ODD_CHARS = st.one_of(st.characters(), SURROGATES, st.sampled_from("\r\n\t\ufeff\u2028\x00\u0301\U0001F389 .;\\\"[]{}"))
# Not st.text: it seldom draws a surrogate even from an alphabet that has them.
odd_text = st.lists(ODD_CHARS, max_size=20).map("".join)
SENTENCES = ["Prices will rise next year.", "The minister blamed the bank.", "Great \U0001F389 news: rates fall.",
             "Headline\r\nBody text.\r\n", "", "  "]
doc_text = st.one_of(st.sampled_from(SENTENCES), st.lists(st.sampled_from(SENTENCES), max_size=3).map(" ".join),
                     odd_text)
raw_json = st.one_of(
    st.integers(4_301, 5_000).map(lambda digits: Raw("9" * digits)),  # over Python's int conversion limit
    st.sampled_from([Raw("1e400"), Raw("-1e400"), Raw("NaN"), Raw("Infinity"), Raw("-0"), Raw("1.0"), Raw("2E1")]),
    st.integers(1, 3_000).map(lambda depth: Raw("[" * depth + "]" * depth)),
    st.integers(1, 3_000).map(lambda depth: Raw('{"a":' * depth + "0" + "}" * depth)),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**80, 2**80), st.floats(), odd_text,
                    raw_json)
ODD = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
                   max_leaves=6)


def sometimes_odd(strategy):
    """Mostly the right kind of value, sometimes any odd value, sometimes absent."""
    return weighted(strategy, 6, ODD, st.just(MISSING))


def obj(**fields):
    """A JSON object with these keys, each value ``sometimes_odd`` (an absent one left out)."""
    return st.fixed_dictionaries({key: sometimes_odd(value) for key, value in fields.items()}).map(
        lambda values: {key: value for key, value in values.items() if value is not MISSING})


def dump(value, ascii_only: bool = True) -> str:
    """JSON text of ``value``: Raw fragments as they are, MISSING items of a list left out."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=ascii_only) + ":" + dump(v, ascii_only)
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value if v is not MISSING) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def encoded(text: str) -> bytes:
    """UTF-8, but an unpaired surrogate is written as its three bytes (which no UTF-8 decoder takes)."""
    return text.encode("utf-8", "surrogatepass")


IDS = weighted(st.sampled_from(["d1", "d2", "article123", "1"]), 3, st.integers(0, 2), ODD)
LABEL = st.one_of(st.sampled_from([*LABELS, "Prediction", "", "x\ud800"]), odd_text)
NAMES = st.one_of(st.sampled_from(["ann-a", "ann-b"]), odd_text)


@st.composite
def span_parts(draw, text: str):
    """Offsets around ``text`` and the span text an export would store (right, or odd)."""
    start, end = draw(st.integers(-2, len(text) + 2)), draw(st.integers(-2, len(text) + 2))
    return start, end, draw(st.one_of(st.just(text[max(start, 0):max(end, 0)]), odd_text))


def span_objects(text: str, **names):
    """A JSON span with the keys ``names`` gives (start, end, text roles -> key), and a label."""
    return span_parts(text).flatmap(lambda parts: obj(
        **{names["start"]: st.just(parts[0]), names["end"]: st.just(parts[1]), names.get("text", "text"):
           st.just(parts[2]), names.get("label", "label"): LABEL}))


# ---- files of each format ----------------------------------------------------------------------------------


@dataclass
class Case:
    """Files to write into an empty folder, the input to read, and reader options."""

    fmt: str
    files: dict[str, bytes]
    input: str
    options: dict = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        for name, content in self.files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)
        return folder / self.input


def json_lines(records) -> st.SearchStrategy[bytes]:
    """A JSONL file: records, odd values, bad bytes and blank lines; ASCII or raw UTF-8, LF or CRLF, a BOM."""
    line = weighted(st.tuples(records, st.booleans()).map(lambda r: encoded(dump(r[0], r[1]))), 6,
                    ODD.map(lambda value: encoded(dump(value))), st.binary(max_size=12), st.just(b""))
    return st.tuples(st.lists(line, max_size=4), st.sampled_from([b"\n", b"\r\n"]), st.booleans()).map(
        lambda parts: (b"\xef\xbb\xbf" if parts[2] else b"") + parts[1].join(parts[0]))


def native_record(text: str):
    checksum = "sha256:" + hashlib.sha256(encoded(text)).hexdigest()
    spans = span_objects(text, start="start", end="end").flatmap(
        lambda span: st.one_of(st.just(span), obj(annotator=NAMES).map(lambda extra: {**span, **extra})))
    return st.one_of(
        obj(doc_id=IDS, text=st.just(text), checksum=st.sampled_from([checksum, "sha256:0"]),
            annotators=st.lists(NAMES, max_size=2), spans=st.lists(sometimes_odd(spans), max_size=3)),
        obj(doc_id=IDS, path=st.sampled_from(["doc.txt", "bad.txt", "missing.txt", "", ".", "sub", "doc.txt\x00x",
                                              "\ud800.txt"]),
            spans=st.lists(sometimes_odd(spans), max_size=3)))


native_cases = st.builds(
    lambda jsonl, text: Case("native", {"docs.jsonl": jsonl, "doc.txt": encoded(text), "bad.txt": b"ok \xff\xfe",
                                        "sub/x.txt": b"x"}, "docs.jsonl"),
    doc_text.flatmap(lambda text: json_lines(native_record(text))), doc_text)


def doccano_record(text: str):
    triple = span_parts(text).flatmap(lambda parts: st.tuples(
        sometimes_odd(st.just(parts[0])), sometimes_odd(st.just(parts[1])), sometimes_odd(LABEL)).map(
        lambda items: [item for item in items if item is not MISSING]))
    entity = span_objects(text, start="start_offset", end="end_offset")
    return obj(id=IDS, text=st.just(text), label=st.lists(sometimes_odd(triple), max_size=3),
               labels=st.lists(triple, max_size=2), entities=st.lists(sometimes_odd(entity), max_size=3))


doccano_cases = st.builds(lambda jsonl: Case("doccano", {"docs.jsonl": jsonl}, "docs.jsonl"),
                          doc_text.flatmap(lambda text: json_lines(doccano_record(text))))


def label_studio_value(text: str):
    return span_parts(text).flatmap(lambda parts: obj(
        start=st.just(parts[0]), end=st.just(parts[1]), text=st.just(parts[2]),
        labels=st.lists(sometimes_odd(LABEL), max_size=2)))


def label_studio_task(text: str):
    result = obj(type=st.sampled_from(["labels", "choices"]), value=label_studio_value(text))
    annotation = obj(completed_by=st.one_of(IDS, obj(id=IDS, email=odd_text)), was_cancelled=st.booleans(),
                     result=st.lists(sometimes_odd(result), max_size=3))
    full = obj(id=IDS, data=obj(text=st.just(text), body=st.just(text), doc_id=IDS),
               annotations=st.lists(sometimes_odd(annotation), max_size=2))
    json_min = obj(id=IDS, text=st.just(text), annotator=IDS, annotation_id=st.one_of(st.none(), IDS),
                   label=st.lists(label_studio_value(text), min_size=1, max_size=2))
    return st.one_of(full, json_min)


label_studio_cases = st.builds(
    lambda tasks, ascii_only, bom, options: Case(
        "label-studio", {"export.json": (b"\xef\xbb\xbf" if bom else b"") + encoded(dump(tasks, ascii_only))},
        "export.json", options),
    sometimes_odd(st.lists(sometimes_odd(doc_text.flatmap(label_studio_task)), max_size=4)).map(
        lambda tasks: [] if tasks is MISSING else tasks),
    st.booleans(), st.booleans(),
    st.fixed_dictionaries({}, optional={"text_field": st.sampled_from(["text", "body", "nope"]),
                                        "annotations": st.sampled_from(["merge", "per-annotator"])}))

OFFSET_TOKENS = st.one_of(st.integers(-3, 40).map(str), st.sampled_from(["", "x", "1.5", "\u0661\u0662", "9" * 5000,
                                                                        " ", "+3", "1_0"]))


def brat_line(text: str):
    offsets = st.lists(st.tuples(OFFSET_TOKENS, OFFSET_TOKENS).map(" ".join), min_size=1, max_size=3).map(";".join)
    t_line = st.builds(lambda n, label, where, span_text: f"T{n}\t{label} {where}\t{span_text}",
                       st.integers(0, 3), st.sampled_from([*LABELS, "Other", ""]), offsets,
                       st.one_of(st.just(text[:5]), odd_text))
    return st.one_of(t_line, st.sampled_from(["T1\tprediction 1 1;1 0\t", "T1\tprediction", "T", "A1\tNeg T1",
                                              "#1\tAnnotatorNotes T1\tnote", "R1\tRel Arg1:T1 Arg2:T2", "", "\t\t"]),
                     odd_text)


brat_cases = doc_text.flatmap(lambda text: st.builds(
    lambda lines, newline, with_txt, bom, target: Case(
        "brat", {"x.ann": encoded(newline.join(lines)),
                 **({"x.txt": (b"\xef\xbb\xbf" if bom else b"") + encoded(text)} if with_txt else {})},
        target if with_txt else target.replace(".txt", ".ann")),  # an input that is not there is not the file's fault
    st.lists(brat_line(text), max_size=4), st.sampled_from(["\n", "\r\n"]), st.booleans(), st.booleans(),
    st.sampled_from([".", "x.ann", "x.txt"])))


def ptc_line():
    return st.one_of(
        st.builds(lambda *parts: "\t".join(parts), st.sampled_from(["123", "124", "", "x"]),
                  st.sampled_from(["Loaded_Language", "Name_Calling,Labeling", *LABELS, ""]), OFFSET_TOKENS,
                  OFFSET_TOKENS),
        st.lists(OFFSET_TOKENS, max_size=6).map("\t".join), odd_text)


ptc_cases = st.builds(
    lambda text, lines, newline, bom, orphan, target: Case(
        "ptc", {"article123.txt": (b"\xef\xbb\xbf" if bom else b"") + encoded(text),
                "article123.labels.tsv": encoded(newline.join(lines)),
                **({"article9.labels.tsv": b"9\tX\t0\t1\n"} if orphan else {})}, target),
    doc_text, st.lists(ptc_line(), max_size=4), st.sampled_from(["\n", "\r\n"]), st.booleans(), st.booleans(),
    st.sampled_from([".", "article123.txt", "article123.labels.tsv"]))


def garbage_cases(fmt: str, name: str):
    """Any bytes at all where the format's file should be."""
    return st.binary(max_size=40).map(lambda content: Case(fmt, {name: content}, name))


CASES = {
    "native": weighted(native_cases, 6, garbage_cases("native", "docs.jsonl")),
    "label-studio": weighted(label_studio_cases, 6, garbage_cases("label-studio", "export.json")),
    "doccano": weighted(doccano_cases, 6, garbage_cases("doccano", "docs.jsonl")),
    "brat": weighted(brat_cases, 6, garbage_cases("brat", "x.ann")),
    "ptc": weighted(ptc_cases, 6, garbage_cases("ptc", "article123.labels.tsv")),
}


# ---- the properties --------------------------------------------------------------------------------------------


def assert_usable(document) -> None:
    """What later stages need of a read document: valid Unicode throughout, spans inside the text, schema labels."""
    for value in (document.doc_id, document.text, *document.annotators):
        value.encode("utf-8")
    for span in document.spans:
        assert 0 <= span.start < span.end <= len(document.text) and span.label in LABELS


def what_errors_name(case: Case, path: Path, folder: Path) -> Path:
    """The input, or for brat and PTC (pairs of files) its folder: an error may name the other file of a pair."""
    return folder if case.fmt in ("brat", "ptc") else path


def check_reading(case: Case, folder: Path) -> None:
    path = case.write(folder)
    try:
        strict, strict_error = read_annotations(case.fmt, path, labels=LABELS, **case.options), None
    except StanceclfError as error:  # anything else fails the test with its traceback
        strict, strict_error = None, error
    report = ReadReport()
    lenient = read_annotations(case.fmt, path, labels=LABELS, strict=False, report=report, **case.options)
    if strict_error is not None:
        assert CODED.match(str(strict_error)), strict_error
        named = what_errors_name(case, path, folder)
        assert str(named) in str(strict_error), f"the error does not name {named}: {strict_error}"
        assert str(strict_error) in report.skipped, "lenient mode did not skip and list what strict mode stopped at"
    else:
        assert lenient == strict
    assert report.documents == len(lenient) and report.spans == sum(len(d.spans) for d in lenient)
    for document in lenient:
        assert_usable(document)


def test_fuzz_every_reader_format_has_a_strategy():
    assert set(CASES) == set(FORMATS)


@fuzz_settings(120)
@given(case=CASES["native"])
def test_fuzz_native_reader(case):
    with tempfile.TemporaryDirectory() as folder:
        check_reading(case, Path(folder))


@fuzz_settings(120)
@given(case=CASES["label-studio"])
def test_fuzz_label_studio_reader(case):
    with tempfile.TemporaryDirectory() as folder:
        check_reading(case, Path(folder))


@fuzz_settings(120)
@given(case=CASES["doccano"])
def test_fuzz_doccano_reader(case):
    with tempfile.TemporaryDirectory() as folder:
        check_reading(case, Path(folder))


@fuzz_settings(120)
@given(case=CASES["brat"])
def test_fuzz_brat_reader(case):
    with tempfile.TemporaryDirectory() as folder:
        check_reading(case, Path(folder))


@fuzz_settings(120)
@given(case=CASES["ptc"])
def test_fuzz_ptc_reader(case):
    with tempfile.TemporaryDirectory() as folder:
        check_reading(case, Path(folder))


@fuzz_settings(50, big_run_share=20)
@given(case=st.one_of(*CASES.values()), lenient=st.booleans())
def test_fuzz_build_dataset(case, lenient):
    """The CLI end to end: exit 0, or exit 1 with a coded message naming the input; --lenient always builds."""
    from typer.testing import CliRunner

    from stanceclf.cli import app

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        path = case.write(folder)
        args = ["build-dataset", str(path), "--format", case.fmt, "--out", str(folder / "built"),
                "--export", "none", *(f"--reader-option={key}={value}" for key, value in case.options.items()),
                *(["--lenient"] if lenient else [])]
        result = CliRunner().invoke(app, args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError("".join(traceback.format_exception(result.exception)))
        if lenient:
            assert result.exit_code == 0, result.output
        elif result.exit_code != 0:
            assert result.exit_code == 1 and CODED.search(result.output), result.output
            assert str(what_errors_name(case, path, folder)) in result.output, result.output
        if result.exit_code == 0:
            assert (folder / "built" / "build.json").is_file()
