"""Each idea has one home: the same document, score or output gets the same treatment on every path."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stanceclf.cli import app
from stanceclf.data.documents import read_document_text
from stanceclf.data.readers import read_annotations
from stanceclf.data.sheets import export_sheets
from stanceclf.infer.results import RowSpec
from stanceclf.infer.scoring import score_corpus

PACKAGE = Path(__file__).resolve().parents[1] / "stanceclf"
runner = CliRunner()
TEXT = "NATO will expand again. Moscow warned of a dangerous escalation.\nThe summit opened on Monday."


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---- one way to read a document -------------------------------------------------------------
def test_documents_bom_file_gives_identical_offsets_on_every_path(tmp_path, tiny_model_dir):
    """classify, score, every file-reading annotation reader and sheets see the same text (no BOM)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    doc = folder / "doc.txt"
    doc.write_bytes(("\ufeff" + TEXT).encode("utf-8"))
    assert read_document_text(doc) == TEXT

    cli = runner.invoke(app, ["classify", str(doc), "--model", str(tiny_model_dir), "--json"])
    assert cli.exit_code == 0, cli.output
    classified = [(row["start"], row["end"]) for row in map(json.loads, cli.output.splitlines())]
    score_corpus([folder], tmp_path / "scores.jsonl", _load(tiny_model_dir), progress=False)
    scored = [(row["start"], row["end"]) for row in read_jsonl(tmp_path / "scores.jsonl")]
    export_sheets({"doc": read_document_text(doc)}, tmp_path / "sheets")
    sheet = [tuple(pair) for pair in json.loads((tmp_path / "sheets" / "doc.offsets.json").read_text())["sentences"]]
    expected = [(0, 23), (24, 64), (65, 93)]
    assert classified == scored == sheet == expected

    # Annotation formats whose offsets count the byte-order mark (brat, PTC) are shifted onto the same text;
    # the native format's offsets are into the text as read.
    (folder / "doc.ann").write_text("T1\tprediction 1 24\tNATO will expand again.\n", encoding="utf-8")
    (folder / "doc.labels.tsv").write_text("doc\tprediction\t1\t24\n", encoding="utf-8")
    native = tmp_path / "native.jsonl"
    native.write_text(json.dumps({"doc_id": "doc", "path": "docs/doc.txt",
                                  "spans": [{"start": 0, "end": 23, "label": "prediction"}]}) + "\n")
    for fmt, path in (("brat", folder / "doc.ann"), ("native", native)):
        [document] = read_annotations(fmt, path, labels=["prediction"])
        assert document.text == TEXT and [(s.start, s.end) for s in document.spans] == [(0, 23)], fmt
    ptc = tmp_path / "ptc"
    ptc.mkdir()
    (ptc / "article7.txt").write_bytes(("\ufeff" + TEXT).encode("utf-8"))
    (ptc / "article7.labels.tsv").write_text("7\tprediction\t1\t24\n", encoding="utf-8")
    [document] = read_annotations("ptc", ptc, labels=["prediction"])
    assert document.text == TEXT and [(s.start, s.end) for s in document.spans] == [(0, 23)]


def _load(path):
    from stanceclf.infer.model import StanceModel

    return StanceModel.from_pretrained(path)


# ---- one decision rule ------------------------------------------------------------------------
def test_decision_score_exactly_at_threshold_gets_the_same_decision_everywhere(tmp_path, make_tiny_model):
    """A reported score equal to its threshold is a label in classify, score, evaluate and training."""
    from stanceclf.data.dataset import BuildConfig, build_dataset
    from stanceclf.data.documents import AnnotatedDocument
    from stanceclf.data.schema import load_schema
    from stanceclf.model.decision import SCORE_DECIMALS
    from stanceclf.train.evaluation import evaluate_model
    from stanceclf.train.phases import evaluate_logits

    model = make_tiny_model(seed=3)
    sentence = _sentence_rounding_up(model)
    probs = model.predict_proba([sentence])
    at = round(float(probs[0, 0]), SCORE_DECIMALS)
    assert float(probs[0, 0]) < at  # the raw probability is just below the threshold
    thresholds = {label: (at if i == 0 else 1.0) for i, label in enumerate(model.labels)}
    model = make_tiny_model(seed=3, thresholds=thresholds)
    label = model.labels[0]

    assert model.classify(sentence)[0].labels == [label]
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "text": sentence}) + "\n", encoding="utf-8")
    score_corpus([source], tmp_path / "o.jsonl", model, progress=False)
    assert read_jsonl(tmp_path / "o.jsonl")[0]["labels"] == [label]
    document = AnnotatedDocument("a", sentence)
    dataset, _ = build_dataset([], load_schema("claim-types"), BuildConfig(), fixed_splits={"test": [document]})
    report, _, _ = evaluate_model(model, dataset["test"])
    assert report["labels"][label]["predicted"] == 1
    logits = model.predict_logits([sentence])
    trained = evaluate_logits(logits, np.zeros((1, 3)), model.labels, model.temperature_vector,
                               model.threshold_vector)
    assert trained["labels"][label]["predicted"] == 1


def _sentence_rounding_up(model) -> str:
    """A sentence whose first score is rounded up when reported (so float32 and reported scores differ)."""
    from stanceclf.model.decision import SCORE_DECIMALS

    for n in range(200):
        sentence = f"Sentence number {n} about the summit."
        p = float(model.predict_proba([sentence])[0, 0])
        if p < round(p, SCORE_DECIMALS):
            return sentence
    pytest.fail("no sentence with a score that rounds up")


# ---- one row specification --------------------------------------------------------------------
def test_results_every_output_uses_the_row_spec(tmp_path, tiny_model_dir):
    import pandas as pd
    import pyarrow.parquet as pq

    from stanceclf.infer.predict import to_records

    model = _load(tiny_model_dir)
    spec = RowSpec(tuple(model.labels))
    assert list(to_records(model.classify([TEXT]), doc_ids=["d"])[0]) == spec.columns
    (tmp_path / "d.txt").write_text(TEXT, encoding="utf-8")
    cli = runner.invoke(app, ["classify", str(tmp_path / "d.txt"), "--model", str(tiny_model_dir), "--json"])
    assert [list(json.loads(line)) for line in cli.output.splitlines()] == [spec.columns] * 3
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "d", "text": TEXT}) + "\n", encoding="utf-8")
    for suffix in ("jsonl", "csv", "parquet"):
        score_corpus([source], tmp_path / f"o.{suffix}", model, progress=False)
    assert list(read_jsonl(tmp_path / "o.jsonl")[0]) == spec.columns
    assert list(pd.read_csv(tmp_path / "o.csv").columns) == spec.columns
    assert pq.read_schema(tmp_path / "o.parquet").equals(spec.arrow_schema(), check_metadata=False)
    per_document = RowSpec(tuple(model.labels), per_document=True)
    score_corpus([source], tmp_path / "d.parquet", model, progress=False, per_document=True)
    assert pq.read_schema(tmp_path / "d.parquet").equals(per_document.arrow_schema(), check_metadata=False)


# ---- one set of scoring defaults -------------------------------------------------------------
def test_defaults_score_and_suggest_take_their_defaults_from_score_options():
    import inspect

    from stanceclf.cli import annotate_verbs, infer_verbs
    from stanceclf.infer.ray_engine import SentencePredictor
    from stanceclf.infer.scoring.job import ScoreOptions
    from stanceclf.infer.suggest import suggest

    declared = ScoreOptions.model_fields
    for function in (infer_verbs.score, annotate_verbs.suggest, suggest, SentencePredictor.__init__):
        parameters = inspect.signature(function).parameters
        for name in ("max_chars", "batch_size"):
            default = parameters[name].default
            default = getattr(default, "default", default)  # a typer Option carries its default inside
            assert default == declared[name].default, f"{function.__qualname__} {name}={default}"


# ---- the one-way import graph -----------------------------------------------------------------
STAGES = ("data", "train", "model", "infer", "serve", "cli")
#: Which stages each stage may import: data flows one way, data -> train -> model directory -> infer; the
#: HTTP server sits on infer, and only the CLI starts it.
ALLOWED = {"data": {"data"}, "model": {"data", "model"}, "infer": {"data", "model", "infer"},
           "train": {"data", "model", "infer", "train"}, "serve": {"data", "model", "infer", "serve"},
           "cli": set(STAGES)}


def _imported_stages(path: Path) -> set[str]:
    stages = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stanceclf."):
            stages.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            stages.update(a.name.split(".")[1] for a in node.names if a.name.startswith("stanceclf."))
    return stages & set(STAGES)


@pytest.mark.parametrize("stage", [s for s in STAGES if s != "cli"])
def test_layout_imports_flow_one_way(stage):
    for path in sorted((PACKAGE / stage).rglob("*.py")):
        wrong = _imported_stages(path) - ALLOWED[stage]
        assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


def _module_graph(package: Path) -> dict[str, set[str]]:
    """Which modules of ``package`` each of its modules imports: every ``import`` statement, at module level or
    inside a function body, absolute or relative. A name imported from a package that is itself a module of it
    (``from stanceclf.model import adapter``) counts as that module. Importing a module runs its packages'
    ``__init__`` too; those implicit edges are not counted (every module would then import the top package)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = (package.name, *path.relative_to(package).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    imported.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else known(base))
        graph[name] = imported - {None, name}
    return graph


def _import_cycle(package: Path) -> list[str] | None:
    import graphlib

    try:
        graphlib.TopologicalSorter(_module_graph(package)).prepare()
    except graphlib.CycleError as cycle:
        return cycle.args[1]
    return None


def test_layout_no_import_cycle_even_inside_function_bodies():
    cycle = _import_cycle(PACKAGE)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layout_cycle_check_sees_an_import_hidden_in_a_function_body(tmp_path):
    package = tmp_path / "pkg"
    (package / "stage").mkdir(parents=True)
    for init in (package / "__init__.py", package / "stage" / "__init__.py"):
        init.write_text("")
    (package / "stage" / "floor.py").write_text("def load():\n    from pkg.stage.roof import build\n")
    (package / "stage" / "roof.py").write_text("from .floor import load\n")
    assert set(_import_cycle(package)) == {"pkg.stage.floor", "pkg.stage.roof"}
    (package / "stage" / "floor.py").write_text("def load():\n    import json\n")
    assert _import_cycle(package) is None


def test_layout_pure_maths_loads_no_model():
    for module in ("train/calibration.py", "model/metrics.py", "model/decision.py"):
        assert not _imported_stages(PACKAGE / module) & {"infer"}, module


def test_layout_no_function_longer_than_80_lines():
    long = [f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long


def _unannotated_public_functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Public functions and methods without a return annotation: module-level or in a class (under ``if`` or
    ``try`` blocks too); whatever is defined inside a function body is that function's business."""
    found = []
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not child.name.startswith("_") and child.returns is None:
                found.append(child)
        else:
            found.extend(_unannotated_public_functions(child))
    return found


def test_layout_every_public_function_has_a_return_annotation():
    missing = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
               for path in sorted(PACKAGE.rglob("*.py"))
               for node in _unannotated_public_functions(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, "no return annotation:\n" + "\n".join(missing)
