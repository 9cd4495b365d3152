"""The public API: classify(), load(), conversions."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import stanceclf
from stanceclf import classify, load, to_dataframe
from stanceclf.infer.results import Prediction

TEXT = ("Will the arms race weaken the partnership?\n\n"
        "Mr. Putin said the U.S. will deploy missiles in Asia. China warned this could provoke an arms race.\n"
        "Headline Without Final Period\n"
        "Beijing aims to keep its deterrent.")


def test_predict_classify_string_gives_sentences_with_exact_offsets(tiny_model_dir):
    predictions = classify(TEXT, model=tiny_model_dir)
    assert [p.text for p in predictions] == [
        "Will the arms race weaken the partnership?",
        "Mr. Putin said the U.S. will deploy missiles in Asia.",
        "China warned this could provoke an arms race.",
        "Headline Without Final Period",
        "Beijing aims to keep its deterrent.",
    ]
    for p in predictions:
        assert TEXT[p.start:p.end] == p.text
        assert set(p.scores) == {"prediction", "threat_framing", "policy_attribution"}
        assert all(0.0 <= s <= 1.0 for s in p.scores.values())


def test_predict_thresholds_decide_labels(make_tiny_model):
    model = make_tiny_model(thresholds={"prediction": 0.0, "threat_framing": 1.01, "policy_attribution": 0.0})
    for p in model.classify(TEXT):
        assert p.labels == ["prediction", "policy_attribution"]
    strict = make_tiny_model(thresholds={label: 1.01 for label in model.labels})
    assert all(p.labels == [] for p in strict.classify(TEXT))


def test_predict_labels_follow_scores_and_thresholds(make_tiny_model):
    model = make_tiny_model(seed=5)
    scores = [p.scores["prediction"] for p in model.classify(TEXT)]
    cut = float(np.median(scores))
    model = make_tiny_model(seed=5, thresholds={"prediction": cut, "threat_framing": 0.5, "policy_attribution": 0.5})
    for p in model.classify(TEXT):
        assert ("prediction" in p.labels) == (p.scores["prediction"] >= cut)


def test_predict_sklearn_style_methods_return_plain_arrays(make_tiny_model):
    """predict_proba, predict_logits and predict return arrays (not tuples), one row per text and one
    column per label; predict gives what classify decides; calling the model classifies."""
    model = make_tiny_model(seed=5)
    units = ["NATO will expand again.", "Moscow warned of a dangerous escalation.", "The summit opened."]
    proba, logits, decided = model.predict_proba(units), model.predict_logits(units), model.predict(units)
    for array in (proba, logits, decided):
        assert isinstance(array, np.ndarray) and array.shape == (3, len(model.labels))
    assert decided.dtype == np.int8 and set(np.unique(decided)) <= {0, 1}
    cut = float(np.median(proba[:, 0]))
    model = make_tiny_model(seed=5, thresholds={"prediction": cut, "threat_framing": 0.5, "policy_attribution": 0.5})
    classified = model.classify(units, split_sentences=False)
    expected = [[int(label in result[0].labels) for label in model.labels] for result in classified]
    assert model.predict(units).tolist() == expected
    assert model(units, split_sentences=False) == classified


def test_predict_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "stanceclf", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "classify" in done.stdout and "score" in done.stdout


def test_predict_classify_list_batches_across_documents(make_tiny_model):
    model = make_tiny_model()
    texts = [TEXT, "One sentence only.", ""]
    results = model.classify(texts)
    assert len(results) == 3
    assert len(results[0]) == 5 and len(results[1]) == 1 and results[2] == []
    alone = model.classify("One sentence only.")
    assert results[1][0].scores == pytest.approx(alone[0].scores, abs=1e-5)


def test_predict_split_sentences_false_gives_one_unit_per_input(make_tiny_model):
    model = make_tiny_model()
    results = model.classify([TEXT, "Short."], split_sentences=False)
    assert [len(r) for r in results] == [1, 1]
    assert results[0][0].start == 0 and results[0][0].end == len(TEXT) and results[0][0].text == TEXT


def test_predict_empty_and_whitespace_input_give_no_predictions(make_tiny_model):
    model = make_tiny_model()
    assert model.classify("") == []
    assert model.classify("   \n\t  ") == []
    assert model.classify(["  "], split_sentences=False) == [[]]


def test_predict_rejects_non_string_input(make_tiny_model):
    model = make_tiny_model()
    with pytest.raises(TypeError, match="input 1 is NoneType"):
        model.classify(["fine", None])


def test_predict_rejects_text_with_unpaired_surrogate(make_tiny_model):
    with pytest.raises(ValueError, match="input 0 is not valid Unicode.*character 4"):
        make_tiny_model().classify(["bad \ud800 text"])


def test_predict_accepts_a_generator_of_texts(make_tiny_model):
    model = make_tiny_model()
    texts = [TEXT, "Short."]
    from_generator = model.classify(text for text in texts)
    assert [[p.text for p in r] for r in from_generator] == [[p.text for p in r] for r in model.classify(texts)]


def test_predict_very_long_input_is_split_and_bounded(make_tiny_model):
    model = make_tiny_model(max_length=32)
    text = ("The alliance will respond to every provocation. " * 400) + ("word " * 5000)
    predictions = model.classify(text)
    assert len(predictions) > 400
    assert all(text[p.start:p.end] == p.text for p in predictions)
    assert all(len(p.text) <= 3000 for p in predictions)
    assert any(p.truncated for p in predictions)


def test_predict_load_caches_and_is_thread_safe(tiny_model_dir):
    results, errors = [], []

    def worker():
        try:
            model = load(tiny_model_dir)
            results.append((id(model), model.classify(TEXT)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({model_id for model_id, _ in results}) == 1
    first = results[0][1]
    for _, predictions in results[1:]:
        assert len(predictions) == len(first)
        assert all(a.scores == pytest.approx(b.scores, abs=1e-5) for a, b in zip(predictions, first))
    model = load(tiny_model_dir)
    assert model.path == tiny_model_dir and model.labels == ["prediction", "threat_framing", "policy_attribution"]


def test_predict_to_dataframe_and_dicts(make_tiny_model):
    model = make_tiny_model()
    results = model.classify([TEXT, "Another one."])
    frame = to_dataframe(results, doc_ids=["a", "b"])
    assert list(frame["doc_id"]) == ["a"] * 5 + ["b"]
    with pytest.raises(ValueError, match="1 doc_ids for 2 documents"):
        to_dataframe(results, doc_ids=["a"])
    assert {"start", "end", "text", "labels", "score_prediction"} <= set(frame.columns)
    assert isinstance(results[0][0], Prediction)
    assert results[0][0].to_dict()["text"] == "Will the arms race weaken the partnership?"


def test_predict_public_api_is_small_and_importable():
    assert callable(stanceclf.classify) and callable(stanceclf.load)
    assert "classify" in stanceclf.__all__ and "load" in stanceclf.__all__


def test_predict_version_has_one_home_and_the_package_is_typed():
    import importlib.metadata
    import tomllib
    from pathlib import Path

    root = Path(stanceclf.__file__).parent
    project = tomllib.loads((root.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("stanceclf") == stanceclf.__version__
    assert (root / "py.typed").is_file()


def test_predict_load_takes_a_shipped_model_by_name(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    from stanceclf.errors import ModelDirectoryError
    from stanceclf.infer import predict

    root = tmp_path / "shipped"
    shutil.copytree(tiny_model_dir, root / "claim-types")
    shutil.copytree(tiny_model_dir, root / "claim-types-student")
    monkeypatch.setattr(predict, "_SHIPPED_MODEL_ROOTS", (tmp_path / "absent", root))
    monkeypatch.chdir(tmp_path)
    assert load("claim-types-student").path == root / "claim-types-student"
    assert load().path == root / "claim-types" == predict.default_model_path()
    # A folder of that name where the user stands is theirs, and wins.
    shutil.copytree(tiny_model_dir, tmp_path / "claim-types-student")
    assert predict.model_path("claim-types-student").resolve() == tmp_path / "claim-types-student"
    # A folder of that name that holds no model (labels/claim-types, say) does not hide the shipped one.
    (tmp_path / "claim-types").mkdir()
    assert load("claim-types").path == root / "claim-types"
    with pytest.raises(ModelDirectoryError, match=r"'claim-types-large' is neither a model directory nor a "
                                                  r"shipped model \(shipped: claim-types, claim-types-student\)"):
        load("claim-types-large")


def test_predict_shipped_models_are_the_mpnet_default_and_the_minilm_student():
    from stanceclf.infer.predict import shipped_model_path
    from stanceclf.model.manifest import ModelManifest

    assert ModelManifest.read(shipped_model_path()).base_model == "packaged:all-mpnet-base-v2"
    assert ModelManifest.read(shipped_model_path("claim-types-student")).base_model == "packaged:all-minilm-l6-v2"


@pytest.mark.parametrize("name", ["claim-types", "claim-types-student"])
def test_predict_shipped_manifests_hold_no_machine_paths_or_float_noise(name):
    """What `stanceclf info` and `/v1/model` show of a shipped model: no developer's absolute path, and
    thresholds as short as the decisions need (a midpoint of two 6-decimal scores has 7 decimals)."""
    import json

    from stanceclf.infer.predict import default_model_path

    manifest_path = default_model_path().parent / name / "stanceclf.json"
    text = manifest_path.read_text(encoding="utf-8")

    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    manifest = json.loads(text)
    assert not [s for s in strings(manifest) if s.startswith(("/", "~")) or ":\\" in s]
    for label, threshold in manifest["thresholds"].items():
        assert len(repr(threshold).split(".")[1]) <= 7, (label, threshold)
