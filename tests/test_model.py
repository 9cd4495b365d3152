"""The model wrapper: manifest, save/load, safety of what is read back, inference details."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stanceclf.errors import ModelDirectoryError
from stanceclf.model.manifest import MANIFEST_NAME, ModelManifest
from stanceclf.infer.model import StanceModel
from stanceclf.model.decision import probabilities


def test_model_save_load_round_trip_keeps_thresholds_and_temperatures(tmp_path, make_tiny_model):
    model = make_tiny_model(thresholds={"prediction": 0.31, "threat_framing": 0.62, "policy_attribution": 0.45},
                            temperatures={"prediction": 1.7, "threat_framing": 0.8, "policy_attribution": 1.1})
    directory = model.save_pretrained(tmp_path / "m")
    loaded = StanceModel.from_pretrained(directory)
    assert loaded.thresholds == {"prediction": 0.31, "threat_framing": 0.62, "policy_attribution": 0.45}
    assert loaded.manifest.temperatures == model.manifest.temperatures
    assert loaded.labels == ["prediction", "threat_framing", "policy_attribution"]
    texts = ["Russia will respond.", "The weather was mild today, people said."]
    original, _ = model.predict_proba(texts)
    again, _ = loaded.predict_proba(texts)
    np.testing.assert_allclose(original, again, atol=1e-6)


def test_model_directory_loads_with_transformers_pipeline(tiny_model_dir):
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(tiny_model_dir), top_k=None)
    scores = classifier("NATO will expand.")
    names = {item["label"] for item in (scores[0] if isinstance(scores[0], list) else scores)}
    assert names == {"prediction", "threat_framing", "policy_attribution"}
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"


def test_model_directory_has_manifest_card_and_only_safe_files(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"model.safetensors", "config.json", MANIFEST_NAME, "README.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".pickle")) for n in names)
    manifest = json.loads((tiny_model_dir / MANIFEST_NAME).read_text())
    assert manifest["library_versions"]["torch"] != "not installed"
    assert manifest["label_schema"]["name"] == "claim-types"
    card = (tiny_model_dir / "README.md").read_text()
    assert "prediction" in card and "threshold 0.500" in card


def test_model_refuses_newer_manifest_format(tiny_model_dir):
    path = tiny_model_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ModelDirectoryError, match="newer than this stanceclf"):
        StanceModel.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("change, message", [
    ({"format_version": 0}, "format_version must be a positive integer"),
    ({"format_version": True}, "format_version must be a positive integer"),
    ({"temperatures": {"prediction": float("nan"), "threat_framing": 1.0, "policy_attribution": 1.0}},
     "temperatures must be positive finite"),
    ({"thresholds": {"prediction": float("nan"), "threat_framing": 0.5, "policy_attribution": 0.5}},
     r"thresholds must be finite"),
    ({"max_length": 100000}, "exceeds the model's"),
])
def test_model_refuses_manifest_with_bad_values(tiny_model_dir, change, message):
    path = tiny_model_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(ModelDirectoryError, match=message) as excinfo:
        StanceModel.from_pretrained(tiny_model_dir)
    assert str(tiny_model_dir) in str(excinfo.value)


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "must be a JSON object"), (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"format": "stanceclf-mo', "not valid JSON: Unterminated string starting at line 1, column 12")])
def test_model_refuses_unreadable_manifest(tiny_model_dir, content, message):
    (tiny_model_dir / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(ModelDirectoryError, match=message):
        StanceModel.from_pretrained(tiny_model_dir)


def test_model_refuses_manifest_whose_labels_do_not_match_the_head(tiny_model_dir):
    path = tiny_model_dir / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["label_schema"]["labels"][0]["name"] = "forecast"
    data["thresholds"]["forecast"] = data["thresholds"].pop("prediction")
    data["temperatures"]["forecast"] = data["temperatures"].pop("prediction")
    path.write_text(json.dumps(data))
    with pytest.raises(ModelDirectoryError, match="id2label"):
        StanceModel.from_pretrained(tiny_model_dir)


def test_model_refuses_directory_without_safetensors(tiny_model_dir):
    (tiny_model_dir / "model.safetensors").unlink()
    (tiny_model_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelDirectoryError, match="safetensors"):
        StanceModel.from_pretrained(tiny_model_dir)


def test_model_refuses_missing_manifest(tmp_path):
    with pytest.raises(ModelDirectoryError, match="stanceclf.json"):
        StanceModel.from_pretrained(tmp_path)


def test_model_manifest_rejects_thresholds_for_other_labels(make_tiny_model):
    model = make_tiny_model()
    data = model.manifest.model_dump()
    data["thresholds"] = {"prediction": 0.5}
    with pytest.raises(ValueError, match="thresholds"):
        ModelManifest.model_validate(data)


def test_model_truncation_is_counted_and_respects_max_length(make_tiny_model):
    model = make_tiny_model(max_length=16)
    long_text = " ".join(["word"] * 200)
    ids, truncated = model.tokenize([long_text, "short one"])
    assert truncated == [True, False]
    assert len(ids[0]) == 16
    assert ids[0][-1] == model.tokenizer.sep_token_id
    predictions = model.classify(long_text, split_sentences=False)
    assert predictions[0].truncated is True


def test_model_length_sorted_batches_match_one_at_a_time(make_tiny_model):
    model = make_tiny_model()
    texts = ["a", "a much longer sentence about the arms race in Asia and beyond", "medium length text here"] * 5
    batched, _ = model.predict_logits(texts, batch_size=4)
    single = np.vstack([model.predict_logits([t], batch_size=1)[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_model_probabilities_apply_temperature():
    logits = np.array([[2.0, -2.0]])
    plain = probabilities(logits, np.array([1.0, 1.0]))
    softened = probabilities(logits, np.array([2.0, 2.0]))
    assert plain[0, 0] == pytest.approx(1 / (1 + np.exp(-2)), rel=1e-5)
    assert softened[0, 0] == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-5)
    assert softened[0, 1] > plain[0, 1]


@pytest.mark.parametrize("backend", ["bf16", "onnx"])
def test_model_fast_path_within_tolerance_of_fp32(make_tiny_model, backend):
    model = make_tiny_model(seed=3)
    texts = ["The US will deploy missiles in Asia.", "China warned of an arms race.",
             "Putin met Xi in Moscow on Monday.", "Prices rose again.", "a " * 60] * 4
    fp32, _ = model.predict_proba(texts)
    fast = model.accelerated(backend)
    assert fast.backend == backend and fast.encoder is not None
    scores, _ = fast.predict_proba(texts)
    assert np.abs(fp32 - scores).max() <= 0.02


@pytest.mark.parametrize("backend", ["bf16", "onnx"])
def test_model_fast_path_of_shipped_model_within_tolerance_on_seed_articles(backend):
    """The real check: the shipped model's scores on every seed sentence, fast vs fp32."""
    from pathlib import Path

    from stanceclf.infer.predict import default_model_path

    model = StanceModel.from_pretrained(default_model_path())
    fast = model.accelerated(backend)
    seeds = sorted((Path(__file__).resolve().parents[1] / "examples" / "seeds").glob("*.txt"))
    texts = [s.text for path in seeds for s in model.split(path.read_text(encoding="utf-8"))]
    assert len(texts) > 200
    fp32, _ = model.predict_proba(texts)
    scores, _ = fast.predict_proba(texts)
    assert np.abs(fp32 - scores).max() <= 0.02


def test_model_fast_backend_resolution():
    from stanceclf.errors import BackendError
    from stanceclf.infer import backends as fast_path

    assert fast_path.resolve_backend(True) == fast_path.resolve_backend("auto") == "auto"
    assert fast_path.resolve_backend(False) == "torch"
    assert fast_path.resolve_backend("bf16") == "bf16"
    with pytest.raises(BackendError, match="E022.*'int4'"):
        fast_path.resolve_backend("int4")
