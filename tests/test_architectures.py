"""Every base-model family of the architecture table (BERT, MPNet) through every stage:
train, calibrate, save, load, each backend, export to a plain pipeline folder, LoRA."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from stanceclf.cache import cache_dir
from stanceclf.data.schema import load_schema
from stanceclf.files import file_sha256
from stanceclf.infer.backends import BACKENDS
from stanceclf.infer.model import StanceModel
from stanceclf.model.adapter import MERGED_FOLDER
from stanceclf.model.architectures import architecture_of
from stanceclf.model.directory import export_model_directory
from stanceclf.model.manifest import manifest_digest
from stanceclf.train.recipe import load_recipe
from stanceclf.train.phases import build_base_model
from stanceclf.train.trainer import train

from conftest import tiny_config
from test_training import write_recipe

TEXTS = ["The army will attack the city soon.", "Officials warned of a deadly threat.",
         "The museum opened a new wing.", "Prices are likely to rise next year, experts said on Monday.",
         "a " * 40]


def tiny_of(architecture: str, tokenizer, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    config = tiny_config(tokenizer.vocab_size, architecture=architecture)
    return build_base_model("unused", load_schema("claim-types"), config=config)


def reloaded_scores_match(reloaded: StanceModel, trained: StanceModel, *, atol: float):
    """The reloaded model scores as the trained one did, and every backend that bounds scores within its
    bound of it (int8 bounds decisions, on real models: tests/test_model.py): its scores."""
    reference = reloaded.predict_proba(TEXTS)
    np.testing.assert_allclose(reference, trained.predict_proba(TEXTS), atol=atol)
    for name, backend in BACKENDS.items():
        if backend.max_score_change is None:
            continue
        scores = reloaded.accelerated(name).predict_proba(TEXTS)
        assert np.abs(scores - reference).max() <= backend.max_score_change, name
    return reference


def test_architectures_train_save_load_every_backend_and_export(tmp_path, base_tokenizer, architecture):
    recipe = load_recipe(write_recipe(tmp_path), ["training.max_steps=6", "training.eval_every=6"])
    trained = train(recipe, model=tiny_of(architecture, base_tokenizer), tokenizer=base_tokenizer, progress=False)
    assert trained.model.config.model_type == architecture
    assert set(trained.manifest.temperatures) == set(trained.labels)
    reloaded = StanceModel.from_pretrained(tmp_path / "model")
    assert reloaded.model.config.model_type == architecture
    reference = reloaded_scores_match(reloaded, trained, atol=1e-6)
    predictions = reloaded.classify("The army will attack the city soon. The museum opened a new wing.")
    assert len(predictions) == 2

    from transformers import pipeline

    plain = export_model_directory(tmp_path / "model", tmp_path / "plain")
    classifier = pipeline("text-classification", model=str(plain), top_k=None)
    raw = classifier(TEXTS[:2])
    assert {item["label"] for item in raw[0]} == set(reloaded.labels)
    # The pipeline's raw sigmoid is the model's uncalibrated score.
    logits = reloaded.predict_logits(TEXTS[:2])
    sigmoid = {item["label"]: item["score"] for item in raw[1]}
    for j, label in enumerate(reloaded.labels):
        assert sigmoid[label] == pytest.approx(1 / (1 + np.exp(-logits[1, j])), abs=1e-5)


def test_architectures_lora_trains_adapters_and_saves_a_merged_model(tmp_path, base_tokenizer, architecture):
    pytest.importorskip("peft")
    import torch

    recipe = load_recipe(write_recipe(tmp_path), ["training.method=lora", "training.max_steps=4",
                                                  "training.eval_every=4", "training.learning_rate=1e-2"])
    model = tiny_of(architecture, base_tokenizer)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trained = train(recipe, model=model, tokenizer=base_tokenizer, progress=False)
    after = trained.model.state_dict()
    # Merged back: the plain architecture's parameter names, no adapter left over.
    assert set(after) == set(before)
    targets = architecture_of(architecture).lora_targets
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert any(name.split(".")[-2] in targets for name in changed), changed
    assert any("embeddings" in name for name in before) and not any("embeddings" in name for name in changed)
    reloaded = StanceModel.from_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model_type"] == architecture
    scores = reloaded.predict_proba(TEXTS)
    merged = trained.predict_proba(TEXTS)
    np.testing.assert_allclose(scores, merged, atol=1e-6)


def test_architectures_position_limit_counts_mpnet_padding_offset(make_tiny_model, architecture):
    import torch

    from stanceclf.errors import ModelDirectoryError
    from stanceclf.model.directory import check_head

    model = make_tiny_model(architecture=architecture)
    usable = architecture_of(model.model.config).usable_positions(model.model.config)
    assert usable == 128
    check_head(model.model.config, model.manifest.model_copy(update={"max_length": usable}))
    with pytest.raises(ModelDirectoryError, match="exceeds the model's 128 usable positions"):
        check_head(model.model.config, model.manifest.model_copy(update={"max_length": usable + 1}))
    # A sequence of exactly the usable length runs (MPNet reads positions from pad_token_id + 1 on).
    ids = torch.full((1, usable), 1000, dtype=torch.long)
    with torch.inference_mode():
        assert model.model(input_ids=ids).logits.shape == (1, 3)


def test_architectures_lora_adapter_directory_holds_the_adapter_and_pins_its_base(tmp_path, base_tokenizer,
                                                                                  architecture):
    pytest.importorskip("peft")
    from transformers import pipeline

    from stanceclf.errors import ModelDirectoryError

    base = tmp_path / "base"
    tiny_of(architecture, base_tokenizer).save_pretrained(base)
    base_tokenizer.save_pretrained(base)
    recipe = load_recipe(write_recipe(tmp_path), [f"base_model={base}", "training.method=lora",
                                                  "training.lora_storage=adapter", "training.max_steps=4",
                                                  "training.eval_every=4", "training.learning_rate=1e-2"])
    trained = train(recipe, progress=False)
    folder = tmp_path / "model"
    assert not (folder / "model.safetensors").exists()
    adapter_bytes = (folder / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < (base / "model.safetensors").stat().st_size
    manifest = json.loads((folder / "stanceclf.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["stored_weights"] == {"kind": "lora-adapter", "base": str(base.resolve()),
                                          "base_sha256": file_sha256(base / "model.safetensors")}
    assert manifest["stored_weights"]["base_sha256"] in (folder / "README.md").read_text()  # the card says so

    # As a packaged base is saved: named by a hub id, while the weights come from a verified local folder.
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**adapter_config, "base_model_name_or_path": "org/base"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a load that warns on every call would reach every user
        reloaded = StanceModel.from_pretrained(folder)
    reference = reloaded_scores_match(reloaded, trained, atol=1e-5)
    # The trained model carries the manifest it saved, so caches keyed on it treat both as one model.
    assert manifest_digest(trained.manifest) == manifest_digest(reloaded.manifest)
    # Saved again, it stays an adapter; exported, it is a plain folder that pipeline reads.
    reloaded.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "again" / "model.safetensors").exists()
    plain = export_model_directory(folder, tmp_path / "plain")
    assert not (plain / "adapter_model.safetensors").exists()
    assert "stored_weights" not in json.loads((plain / "stanceclf.json").read_text())
    np.testing.assert_allclose(StanceModel.from_pretrained(plain).predict_proba(TEXTS), reference, atol=1e-5)
    assert {item["label"] for item in pipeline("text-classification", model=str(plain), top_k=None)(TEXTS[:1])[0]} \
        == set(reloaded.labels)

    # Saved into its own base's folder, it would delete the weights it needs: refused, base kept.
    with pytest.raises(ModelDirectoryError, match="holds the adapter's own base weights"):
        reloaded.save_pretrained(base)
    assert file_sha256(base / "model.safetensors") == manifest["stored_weights"]["base_sha256"]

    # Other weights at the base's path: refused, never merged into wrong scores; even when the copy
    # keeps the file's size and modification time (cp -p, rsync), which a digest cache must not trust.
    stat = (base / "model.safetensors").stat()
    tiny_of(architecture, base_tokenizer, seed=1).save_pretrained(base)
    assert (base / "model.safetensors").stat().st_size == stat.st_size
    os.utime(base / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # The merged model cached by the loads above was made from the verified base: it still scores right.
    np.testing.assert_allclose(StanceModel.from_pretrained(folder).predict_proba(TEXTS), reference, atol=1e-5)
    for cached in (cache_dir() / MERGED_FOLDER).glob("*.safetensors"):
        cached.unlink()
    with pytest.raises(ModelDirectoryError, match="trained on base weights with sha256"):
        StanceModel.from_pretrained(folder)


def test_architectures_lora_adapter_merged_once_then_loaded_without_transformers_or_peft(tmp_path, base_tokenizer):
    """The cold start of an adapter model: the first load merges and caches, later ones read the merged
    file (in a fresh process, so that nothing is imported yet); a damaged cached file is merged again."""
    import subprocess
    import sys

    from stanceclf.errors import ModelDirectoryError
    from stanceclf.model.adapter import merged_key

    base = tmp_path / "base"
    tiny_of("mpnet", base_tokenizer).save_pretrained(base)
    base_tokenizer.save_pretrained(base)
    recipe = load_recipe(write_recipe(tmp_path), [f"base_model={base}", "training.method=lora",
                                                  "training.lora_storage=adapter", "training.max_steps=2",
                                                  "training.eval_every=2", "training.learning_rate=1e-2"])
    trained = train(recipe, progress=False)
    folder, cache = tmp_path / "model", tmp_path / "cache"
    code = ("import sys, json, stanceclf; m = stanceclf.load(sys.argv[1]); "
            "print(json.dumps([type(m.model).__name__, 'transformers' in sys.modules, 'peft' in sys.modules, "
            "m.predict_proba(json.loads(sys.argv[2])).tolist()]))")

    def load_in_a_fresh_process():
        result = subprocess.run([sys.executable, "-c", code, str(folder), json.dumps(TEXTS)], capture_output=True,
                                text=True, env={**os.environ, "STANCECLF_CACHE": str(cache)}, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        name, transformers, peft, scores = json.loads(result.stdout.splitlines()[-1])
        np.testing.assert_allclose(scores, trained.predict_proba(TEXTS), atol=1e-5)
        return name, transformers, peft

    assert load_in_a_fresh_process() == ("MPNetClassifier", True, True)  # merged now
    cached = cache / MERGED_FOLDER / f"{merged_key(folder, file_sha256(base / 'model.safetensors'))}.safetensors"
    assert cached.is_file()
    assert load_in_a_fresh_process() == ("MPNetClassifier", False, False)
    cached.write_bytes(cached.read_bytes()[:1000])  # truncated, as by a full disk before the rename
    assert load_in_a_fresh_process() == ("MPNetClassifier", True, True)
    assert load_in_a_fresh_process() == ("MPNetClassifier", False, False)  # replaced by a whole one

    # Saved again, the adapter is read then, once for the model and its accelerated copies: saving the
    # model over its own folder first does not make the copy's save fail or differ.
    loaded = StanceModel.from_pretrained(folder)
    copy = loaded.accelerated("bf16")
    loaded.save_pretrained(folder, storage_dtype="float16")
    copy.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "adapter_model.safetensors").read_bytes() \
        != (folder / "adapter_model.safetensors").read_bytes()  # float32 as loaded, not the float16 rewrite
    np.testing.assert_allclose(StanceModel.from_pretrained(tmp_path / "copy").predict_proba(TEXTS),
                               trained.predict_proba(TEXTS), atol=1e-5)
    # If its files changed since loading, they are not this model's; if they are gone, it says so.
    loaded = StanceModel.from_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": config["lora_alpha"] * 2}))
    with pytest.raises(ModelDirectoryError, match="changed since this model was loaded"):
        loaded.save_pretrained(tmp_path / "again")
    loaded = StanceModel.from_pretrained(tmp_path / "copy")
    (tmp_path / "copy").rename(tmp_path / "moved")
    with pytest.raises(ModelDirectoryError, match="cannot be read again"):
        loaded.save_pretrained(tmp_path / "again")


def test_architectures_lora_adapter_on_a_hub_base_trains_and_loads_offline_from_the_hub_cache(tmp_path,
                                                                                             base_tokenizer):
    """A base named by a hub id: found in the local hub cache with no network, pinned, and loaded back.
    In a child process, since huggingface_hub reads HF_HUB_CACHE when it is imported."""
    pytest.importorskip("peft")
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-base"
    tiny_of("bert", base_tokenizer).save_pretrained(repo / "snapshots" / commit)
    base_tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    recipe = write_recipe(tmp_path)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    trained = subprocess.run(
        [sys.executable, "-m", "stanceclf.cli", "train", str(recipe), "--set", "base_model=someone/tiny-base",
         "--set", "training.method=lora", "--set", "training.lora_storage=adapter", "--set", "training.max_steps=2",
         "--set", "training.eval_every=2"], capture_output=True, text=True, env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "it/s]" not in trained.stderr and "s/it]" not in trained.stderr  # no progress bar in a log
    manifest = json.loads((tmp_path / "model" / "stanceclf.json").read_text())
    weights = repo / "snapshots" / commit / "model.safetensors"
    assert manifest["stored_weights"]["base"] == "someone/tiny-base"
    assert manifest["stored_weights"]["base_sha256"] == file_sha256(weights)
    loaded = subprocess.run(
        [sys.executable, "-c", "from stanceclf import load; "
         f"print(len(load({str(tmp_path / 'model')!r}).classify('The army will attack the city soon.')))"],
        capture_output=True, text=True, env=env)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "1", loaded.stderr[-2000:]


def test_architectures_lora_adapter_refuses_a_base_that_lacks_tensors_it_cannot_restore(tmp_path, base_tokenizer):
    """A base file without some tensors (here BERT's pooler) is filled with random values by transformers:
    the trained model used one draw, a reload would use another. Loading says so instead."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file, save_file

    from stanceclf.errors import ModelDirectoryError

    base = tmp_path / "base"
    tiny_of("bert", base_tokenizer).save_pretrained(base)
    base_tokenizer.save_pretrained(base)
    tensors = load_file(base / "model.safetensors")
    save_file({name: value for name, value in tensors.items() if "pooler" not in name}, base / "model.safetensors",
              metadata={"format": "pt"})
    recipe = load_recipe(write_recipe(tmp_path), [f"base_model={base}", "training.method=lora",
                                                  "training.lora_storage=adapter", "training.max_steps=2",
                                                  "training.eval_every=2"])
    train(recipe, progress=False)
    with pytest.raises(ModelDirectoryError, match="lacks.*pooler"):
        StanceModel.from_pretrained(tmp_path / "model")


def test_architectures_lora_storage_adapter_needs_lora_and_is_signed(tmp_path):
    from stanceclf.train.signature import run_signature

    with pytest.raises(Exception, match="needs method = 'lora'"):
        load_recipe(write_recipe(tmp_path), ["training.lora_storage=adapter"])
    merged = load_recipe(write_recipe(tmp_path), ["training.method=lora"])
    stored = load_recipe(write_recipe(tmp_path), ["training.method=lora", "training.lora_storage=adapter"])
    assert run_signature(merged, "data") != run_signature(stored, "data")


def test_architectures_lora_storage_adapter_refuses_what_it_cannot_pin_before_training(tmp_path, base_tokenizer):
    from stanceclf.errors import RecipeError

    # A model passed in is not the recipe's base, which the adapter would name.
    stored = load_recipe(write_recipe(tmp_path), ["training.method=lora", "training.lora_storage=adapter"])
    with pytest.raises(RecipeError, match="another model was passed to train"):
        train(stored, model=tiny_of("bert", base_tokenizer), tokenizer=base_tokenizer, progress=False)
    # A base without a single model.safetensors: refused at once, not after the training it would waste.
    base = tmp_path / "sharded-base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    unpinnable = load_recipe(write_recipe(tmp_path), [f"base_model={base}", "training.method=lora",
                                                      "training.lora_storage=adapter"])
    with pytest.raises(RecipeError, match="has no model.safetensors"):
        train(unpinnable, progress=False)
    assert not (tmp_path / "model").exists() and not list(tmp_path.glob("run*/checkpoint-*"))


def test_architectures_lora_storage_adapter_refuses_a_base_that_changed_during_training(tmp_path, base_tokenizer,
                                                                                        monkeypatch):
    from stanceclf.errors import RecipeError
    from stanceclf.train import trainer

    base = tmp_path / "base"
    tiny_of("bert", base_tokenizer).save_pretrained(base)
    base_tokenizer.save_pretrained(base)
    recipe = load_recipe(write_recipe(tmp_path), [f"base_model={base}", "training.method=lora",
                                                  "training.lora_storage=adapter", "training.max_steps=2",
                                                  "training.eval_every=2"])
    # The digest taken before training differs from the one the adapter pins after it.
    monkeypatch.setattr(trainer, "base_weights_sha256", lambda base: "0" * 64)
    with pytest.raises(RecipeError, match="changed while the model trained.*nothing was saved"):
        train(recipe, progress=False)
    assert not (tmp_path / "model").exists()


def test_architectures_base_weights_are_hashed_once_through_the_files_stamp_cache(tmp_path):
    from stanceclf import files
    from stanceclf.model.adapter import base_weights_sha256

    weights = tmp_path / "base" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"the base's weights")
    assert base_weights_sha256(str(weights.parent)) == files.file_sha256(weights)
    # The adapter's reading is the one files.stamped_sha256 remembers: asking again reads nothing.
    hits = files._sha256_of.cache_info().hits
    assert files.stamped_sha256(weights) == files.file_sha256(weights)
    assert files._sha256_of.cache_info().hits == hits + 1
    weights.write_bytes(b"other weights")
    assert base_weights_sha256(str(weights.parent)) == files.file_sha256(weights)
