"""Scoring on Ray: a real local Ray cluster (2 CPUs, shared by the module's tests) against the local engine."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import interrupt_on_call
from stanceclf.errors import InputRecordError, RayEngineError, ScoringSetupError
from stanceclf.infer.model import StanceModel
from stanceclf.infer.ray_engine import ModelFiles, SentencePredictor, score_corpus_on_ray
from stanceclf.infer.scoring import score_corpus

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

ARTICLE = ("NATO will expand again. Moscow warned of a dangerous escalation.\n"
           "The summit opened on Monday in Vilnius. Officials said sanctions would follow.")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module: starting one takes several seconds on two cores."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def tiny_model(tiny_model_dir):
    return StanceModel.from_pretrained(tiny_model_dir)


def document(i: int) -> str:
    """Documents of varied length, some long enough to be cut at the tiny model's max_length."""
    return f"Document {i} says the alliance will grow. " + ARTICLE * (i % 3 + 1) + " word" * (i * 7 % 90)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    """The same kind of documents in each input format: JSONL, CSV, Parquet and a folder of text files."""
    import pandas as pd

    jsonl = write_jsonl(tmp_path / "news.jsonl", [{"id": f"j{i}", "text": document(i)} for i in range(12)])
    frame = pd.DataFrame({"id": [f"c{i}" for i in range(10)], "text": [document(i + 3) for i in range(10)]})
    frame.to_csv(tmp_path / "news.csv", index=False)
    frame.assign(id=[f"p{i}" for i in range(10)]).to_parquet(tmp_path / "news.parquet")
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        (folder / ("sub" if i % 2 else "") / f"t{i}.txt").write_text(document(i + 5), encoding="utf-8")
    return [jsonl, tmp_path / "news.csv", tmp_path / "news.parquet", folder]


def rows_of(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def test_ray_engine_rows_equal_the_local_engine_over_every_input_format(tmp_path, cluster, corpus, tiny_model):
    local = score_corpus(corpus, tmp_path / "local.jsonl", tiny_model, chunk_sentences=16, progress=False)
    on_ray = score_corpus_on_ray(corpus, tmp_path / "ray.jsonl", tiny_model, chunk_sentences=16, progress=False)
    expected = rows_of(tmp_path / "local.jsonl")
    assert {r["doc_id"][0] for r in expected} == {"j", "c", "p", "t", "s"}  # all four readers took part
    assert rows_of(tmp_path / "ray.jsonl") == expected
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert (on_ray.documents, on_ray.sentences, on_ray.truncated) == (local.documents, local.sentences,
                                                                      local.truncated)
    assert local.truncated > 0  # the truncation count is carried back from the workers, not guessed
    assert sorted(p.name for p in tmp_path.glob("ray.jsonl*")) == ["ray.jsonl"]  # no partial, lock or error log


def test_ray_engine_per_document_csv_equals_the_local_engine(tmp_path, cluster, corpus, tiny_model):
    options = dict(per_document=True, chunk_sentences=40, progress=False)
    score_corpus(corpus, tmp_path / "local.csv", tiny_model, **options)
    score_corpus_on_ray(corpus, tmp_path / "ray.csv", tiny_model, actors=1, **options)
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert len((tmp_path / "ray.csv").read_text().splitlines()) == 1 + 38  # a header and a row per document


def crashing_predictor(marker: Path) -> type:
    """A predictor whose actor kills its own process on its second chunk, once in the whole run (the marker
    file, created atomically, says it happened and names the process). Defined in a function so that Ray
    ships the class by value: workers cannot import this test module."""

    class CrashingPredictor(SentencePredictor):
        calls = 0

        def __call__(self, batch):
            self.calls += 1
            if self.calls == 2:
                try:
                    handle = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(handle, str(os.getpid()).encode())
                    os.close(handle)
                    os._exit(1)
            return super().__call__(batch)

    return CrashingPredictor


def test_ray_engine_killed_actor_is_retried_without_lost_or_duplicated_rows(tmp_path, cluster, corpus, tiny_model):
    marker = tmp_path / "crashed"
    score_corpus(corpus, tmp_path / "local.parquet", tiny_model, chunk_sentences=8, progress=False)
    score_corpus_on_ray(corpus, tmp_path / "ray.parquet", tiny_model, chunk_sentences=8, actors=2,
                        predictor=crashing_predictor(marker), progress=False)
    pid = int(marker.read_text())  # an actor did die mid-run
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    expected, got = rows_of(tmp_path / "local.parquet"), rows_of(tmp_path / "ray.parquet")
    assert len({(r["doc_id"], r["sentence_index"]) for r in got}) == len(got) == len(expected)
    assert got == expected


def test_ray_sentence_predictor_in_map_batches_gives_classify_rows(tmp_path, cluster, tiny_model_dir, tiny_model):
    """The documented Python entry point: a model shipped through the object store, numpy-format batches."""
    from stanceclf.infer.predict import to_records

    texts = [document(i) for i in range(9)]
    model_ref = ray.put(ModelFiles.read(tiny_model_dir))
    dataset = ray.data.from_items([{"doc_id": f"d{i}", "text": text} for i, text in enumerate(texts)])
    rows = dataset.map_batches(SentencePredictor, fn_constructor_kwargs={"model": model_ref}, batch_size=100,
                               compute=ray.data.ActorPoolStrategy(size=1)).take_all()
    expected = to_records(tiny_model.classify(texts), doc_ids=[f"d{i}" for i in range(9)])
    assert len(rows) == len(expected) > 9
    assert [{**row, "labels": list(row["labels"])} for row in rows] == expected

    broken = ray.data.from_items([{"doc_id": "ok", "text": "Fine."}, {"doc_id": "blank", "text": "  "}])
    with pytest.raises(ray.exceptions.RayError, match=r"\[E030\] document 'blank': text is empty"):
        broken.map_batches(SentencePredictor, fn_constructor_kwargs={"model": model_ref}, batch_size=100,
                           compute=ray.data.ActorPoolStrategy(size=1)).take_all()


BAD_LINES = [{"id": "blank", "text": "   "}, {"id": "none", "text": None}, {"id": "j3", "text": "A repeated id."}]


def test_ray_engine_bad_record_stops_before_anything_is_scored(tmp_path, cluster, corpus, tiny_model):
    source = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "text": ARTICLE}, BAD_LINES[0]])
    with pytest.raises(InputRecordError, match=r"record 1 \(.*bad.jsonl:2, id 'blank'\).*--on-error skip"):
        score_corpus_on_ray([source], tmp_path / "o.jsonl", tiny_model, progress=False)
    assert not list(tmp_path.glob("o.jsonl*"))


def test_cli_score_engine_ray_on_a_running_cluster_skips_like_the_local_engine(tmp_path, cluster, corpus,
                                                                               tiny_model_dir):
    """The CLI as a separate driver, joining the module's cluster by its address."""
    bad = write_jsonl(tmp_path / "bad.jsonl", BAD_LINES)
    inputs = [str(corpus[0]), str(bad), str(corpus[3])]
    for engine, extra in (("local", []), ("ray", ["--engine", "ray", "--address", cluster, "--actors", "1"])):
        command = [sys.executable, "-m", "stanceclf.cli", "score", *inputs, "--out", str(tmp_path / f"{engine}.jsonl"),
                   "--model", str(tiny_model_dir), "--on-error", "skip", "--no-progress", *extra]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "skipped 3 bad records" in done.stderr
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert (tmp_path / "ray.jsonl.errors.jsonl").read_text() == (tmp_path / "local.jsonl.errors.jsonl").read_text()


def test_cli_score_engine_ray_in_a_log_is_quiet(tmp_path, corpus, tiny_model_dir):
    """Started with its own new local Ray and stderr going to a log (not a terminal): no progress bars, and no
    notice that the Ray it started itself uses token authentication; the summary line is there."""
    command = [sys.executable, "-m", "stanceclf", "score", str(corpus[0]), "--out", str(tmp_path / "o.jsonl"),
               "--model", str(tiny_model_dir), "--engine", "ray", "--address", "local"]
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scored " in done.stderr
    assert "scoring on ray" not in done.stderr and "reading:" not in done.stderr
    assert "Token authentication is enabled" not in done.stderr


def test_ray_engine_refuses_an_interrupted_local_run(tmp_path, corpus, tiny_model, monkeypatch):
    """Its progress file is the local engine's to resume: Ray (which does not resume) leaves it alone."""
    interrupt_on_call(monkeypatch, StanceModel, "proba_and_truncation", after=2)
    with pytest.raises(KeyboardInterrupt):
        score_corpus(corpus, tmp_path / "o.jsonl", tiny_model, chunk_sentences=8, progress=False)
    progress = (tmp_path / "o.jsonl.progress.json").read_bytes()
    with pytest.raises(ScoringSetupError, match="interrupted local run.*--engine local"):
        score_corpus_on_ray(corpus, tmp_path / "o.jsonl", tiny_model, progress=False)
    assert (tmp_path / "o.jsonl.progress.json").read_bytes() == progress


def test_ray_engine_without_ray_is_a_coded_error(tmp_path, corpus, tiny_model, tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    from stanceclf.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # what an installation without the extra sees
    with pytest.raises(RayEngineError, match=r"\[E032\].*pip install 'stanceclf\[ray\]'"):
        score_corpus_on_ray(corpus, tmp_path / "o.jsonl", tiny_model, progress=False)
    result = CliRunner().invoke(app, ["score", str(corpus[0]), "--out", str(tmp_path / "o.jsonl"),
                                      "--model", str(tiny_model_dir), "--engine", "ray"])
    assert result.exit_code == 1 and "[E032]" in result.output
    assert not list(tmp_path.glob("o.jsonl*"))


@pytest.mark.parametrize("options,message", [
    (["--address", "auto"], "apply to --engine ray"),
    (["--engine", "ray", "--threads", "2"], "--cpus-per-actor"),
    (["--engine", "spark"], "unknown engine 'spark'"),
    (["--engine", "ray", "--actors", "0"], "actors must be at least 1"),
])
def test_cli_score_engine_options_are_checked(tmp_path, corpus, tiny_model_dir, options, message):
    from typer.testing import CliRunner

    from stanceclf.cli import app

    result = CliRunner().invoke(app, ["score", str(corpus[0]), "--out", str(tmp_path / "o.jsonl"),
                                      "--model", str(tiny_model_dir), *options])
    assert result.exit_code == 1 and "[E031]" in result.output and message in result.output, result.output
