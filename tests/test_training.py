"""The training harness on tiny models (and once on the real packaged base)."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.errors import RecipeError
from stanceclf.infer.model import StanceModel
from stanceclf.data.readers import write_native
from stanceclf.train.recipe import load_recipe
from stanceclf.data.schema import load_schema
from stanceclf.train.phases import build_base_model, positive_weights
from stanceclf.train.trainer import train

from conftest import interrupt_on_call, tiny_config

FORECAST = ["The army will attack the city soon.", "Prices are likely to rise next year.",
            "Experts expect the talks to fail."]
THREAT = ["The missiles pose a grave danger to Europe.", "Officials warned of a deadly threat."]
NEUTRAL = ["The weather was mild and people walked.", "The museum opened a new wing.", "She plays the piano."]


def toy_corpus(n_docs: int = 30, seed: int = 0) -> list[AnnotatedDocument]:
    """Documents whose sentence labels are learnable from their wording."""
    rng = random.Random(seed)
    documents = []
    for d in range(n_docs):
        text, spans = "", []
        for _ in range(8):
            kind = rng.random()
            sentence = rng.choice(FORECAST if kind < 0.25 else THREAT if kind < 0.45 else NEUTRAL)
            start = len(text)
            text += sentence + " "
            if kind < 0.25:
                spans.append(Span(start, start + len(sentence), "prediction", "toy"))
            elif kind < 0.45:
                spans.append(Span(start, start + len(sentence), "threat_framing", "toy"))
        documents.append(AnnotatedDocument(f"toy{d:02d}", text, spans, ("toy",)))
    return documents


def write_recipe(tmp_path, base: str = "tiny-in-process"):
    write_native(toy_corpus(), tmp_path / "toy.jsonl")
    path = tmp_path / "recipe.toml"
    path.write_text(f'''
name = "toy"
schema = "claim-types"
base_model = "{base}"
output_dir = "model"
run_dir = "run"
seed = 3

[data]
inputs = ["toy.jsonl"]
[training]
epochs = 6
batch_size = 8
learning_rate = 2e-3
max_length = 24
early_stopping_patience = 0
''')
    return path


def tiny(base_tokenizer, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return build_base_model("unused", load_schema("claim-types"), config=tiny_config(base_tokenizer.vocab_size))


def mean_bce(model: StanceModel, documents) -> float:
    texts, labels = [], []
    for doc in documents:
        for sentence in model.split(doc.text):
            texts.append(sentence.text)
            labels.append([int(any(s.label == l and s.overlap(sentence.start, sentence.end) for s in doc.spans))
                           for l in model.labels])
    logits = model.predict_logits(texts)
    y = np.array(labels, dtype=float)
    return float(np.mean(np.logaddexp(0, logits) - y * logits))


def test_training_loss_falls_and_model_learns_toy_labels(tmp_path, base_tokenizer, make_tiny_model):
    recipe = load_recipe(write_recipe(tmp_path))
    before = mean_bce(make_tiny_model(seed=0), toy_corpus())
    trained = train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    after = mean_bce(trained, toy_corpus())
    assert after < before * 0.5
    test = trained.manifest.metrics["test"]
    assert test["labels"]["prediction"]["f1"] > 0.9
    assert test["labels"]["threat_framing"]["f1"] > 0.9
    assert "ece_after_calibration" in test and test["ece_after_calibration"] <= test["ece_before_calibration"] + 0.02


def test_training_into_a_log_writes_step_lines_up_to_the_last_step(tmp_path, base_tokenizer, capsys,
                                                                    monkeypatch):
    import re

    from stanceclf import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)  # a line at every step, not a line a minute
    recipe = load_recipe(write_recipe(tmp_path), ["training.epochs=2"])
    trained = train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=True)
    steps = trained.manifest.training["steps"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training: ")]
    assert all("\r" not in line for line in lines)
    assert re.match(rf"training: 100\.0% \({steps}/{steps} steps\) .*epoch=2\.00, loss=\d", lines[-1]), lines[-1]
    assert len(lines) >= steps, "one line per step at a zero interval"


def test_training_stopped_early_says_so_in_its_last_log_line(tmp_path, base_tokenizer, capsys, monkeypatch):
    import re

    from stanceclf import progress

    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)
    # A learning rate near zero leaves dev macro F1 where it was after the first epoch: with a patience of
    # one epoch, training stops after the second of six, every time.
    recipe = load_recipe(write_recipe(tmp_path), ["training.learning_rate=1e-12", "training.early_stopping_patience=1"])
    trained = train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=True)
    steps = trained.manifest.training["steps"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("training")]
    assert re.match(rf"training \(stopped early\): 100\.0% \({steps}/{steps} steps\) .*epoch=2\.00",
                    lines[-1]), lines[-1]
    assert not any("stopped early" in line for line in lines[:-1])


def test_training_bf16_mixed_precision_learns_and_saves_float32(tmp_path, base_tokenizer):
    import torch

    recipe = load_recipe(write_recipe(tmp_path), ["training.precision=bf16"])
    model = tiny(base_tokenizer)
    seen = set()
    model.base_model.encoder.layer[0].intermediate.dense.register_forward_hook(
        lambda module, inputs, output: seen.add(output.dtype) if module.training else None)
    trained = train(recipe, model=model, tokenizer=base_tokenizer, progress=False)
    assert torch.bfloat16 in seen
    assert trained.manifest.metrics["test"]["labels"]["prediction"]["f1"] > 0.9
    reloaded = StanceModel.from_pretrained(tmp_path / "model")
    assert next(reloaded.model.parameters()).dtype == torch.float32
    # The manifest's dev metrics are those of the saved float32 model, not of bf16 logits.
    from stanceclf.train.evaluation import evaluate_model
    from stanceclf.train.phases import prepare_dataset

    dataset, _, _ = prepare_dataset(recipe, load_schema("claim-types"))
    report, _, _ = evaluate_model(reloaded, dataset["dev"])
    for label, row in trained.manifest.metrics["dev"]["labels"].items():
        assert report["labels"][label]["f1"] == pytest.approx(row["f1"], abs=1e-9)
        assert report["labels"][label]["pr_auc"] == pytest.approx(row["pr_auc"], abs=1e-6)
    assert report["ece"] == pytest.approx(trained.manifest.metrics["dev"]["ece_after_calibration"], abs=1e-6)


def test_training_saves_calibration_that_survives_reload(tmp_path, base_tokenizer):
    recipe = load_recipe(write_recipe(tmp_path), ["training.epochs=3"])
    trained = train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    reloaded = StanceModel.from_pretrained(tmp_path / "model")
    assert reloaded.thresholds == pytest.approx(trained.thresholds)
    assert reloaded.manifest.temperatures == pytest.approx(trained.manifest.temperatures)
    assert reloaded.manifest.data_fingerprint.startswith("sha256:")
    assert reloaded.manifest.training["recipe"]["name"] == "toy"
    # The manifest travels with the model: the best checkpoint is named within the run folder, no machine path.
    assert reloaded.manifest.training["best_checkpoint"].startswith("checkpoint-")
    card = (tmp_path / "model" / "README.md").read_text()
    assert "test split" in card and "Expected calibration error" in card


def test_training_resumes_from_last_checkpoint(tmp_path, base_tokenizer, caplog):
    recipe = load_recipe(write_recipe(tmp_path), ["training.max_steps=8", "training.eval_every=4"])
    train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    run = tmp_path / "run"
    assert (run / "checkpoint-4").is_dir() and (run / "checkpoint-8").is_dir()
    # Simulate a run killed after its first checkpoint.
    shutil.rmtree(run / "checkpoint-8")
    shutil.rmtree(tmp_path / "model")
    with caplog.at_level(logging.WARNING, logger="stanceclf.train.phases"):
        resumed = train(recipe, model=tiny(base_tokenizer, seed=1), tokenizer=base_tokenizer, progress=False)
    assert any("resuming from" in r.message and "checkpoint-4" in r.message for r in caplog.records)
    state = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    # The manifest times this session's steps only: the evaluation at step 4 came back with the checkpoint.
    timing = resumed.manifest.training
    assert timing["steps"] == 8 and timing["resumed_from_step"] == 4
    evaluations = [entry for entry in state["log_history"] if "eval_runtime" in entry]
    assert [entry["step"] for entry in evaluations] == [4, 8]
    assert timing["dev_evaluation_seconds"] == pytest.approx(evaluations[-1]["eval_runtime"], abs=0.01)
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_training_resumed_run_keeps_its_early_stopping_patience(tmp_path, base_tokenizer, monkeypatch):
    """A run killed after a dev evaluation that did not improve resumes with that much of its patience
    spent: it stops where the same run uninterrupted stops (a resumed run once ran 260 steps against 195)."""
    from transformers import Trainer

    # Too small a learning rate to change any decision: dev macro F1 never improves on its first value.
    overrides = ["training.max_steps=20", "training.eval_every=2", "training.early_stopping_patience=2",
                 "training.learning_rate=1e-9"]
    runs = {}
    for name in ("whole", "killed"):
        (tmp_path / name).mkdir()
        runs[name] = load_recipe(write_recipe(tmp_path / name), overrides)
    whole = train(runs["whole"], model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    assert whole.manifest.training["steps"] == 6  # best at step 2, no better at 4 and 6: patience spent
    real = interrupt_on_call(monkeypatch, Trainer, "evaluate", after=3)  # killed as step 6's evaluation starts
    with pytest.raises(KeyboardInterrupt):
        train(runs["killed"], model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    monkeypatch.setattr(Trainer, "evaluate", real)
    resumed = train(runs["killed"], model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    assert resumed.manifest.training["resumed_from_step"] == 4
    assert resumed.manifest.training["steps"] == whole.manifest.training["steps"]


def test_training_refuses_to_resume_checkpoints_of_another_run(tmp_path, base_tokenizer):
    path = write_recipe(tmp_path)
    recipe = load_recipe(path, ["training.max_steps=8", "training.eval_every=4"])
    train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    other = load_recipe(path, ["training.max_steps=8", "training.eval_every=4", "seed=99"])
    with pytest.raises(RecipeError, match=r"\[E010\].*run.*checkpoints of another run \(it differs in seed, .*the data\)"):
        train(other, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    # --no-resume starts again: the old checkpoints go, and the new run's are its own.
    train(other, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False, resume=False)
    signature = json.loads((tmp_path / "run" / "run-signature.json").read_text())
    assert signature["recipe"]["seed"] == 99
    # Every option is signed, at its default too (format 1 left group_by_length out while it was false).
    assert signature["format"] == 2 and signature["recipe"]["training"]["group_by_length"] is False
    # Checkpoints signed by an earlier stanceclf (its signatures had no format number) are refused as such.
    del signature["format"]
    (tmp_path / "run" / "run-signature.json").write_text(json.dumps(signature))
    with pytest.raises(RecipeError, match=r"checkpoints signed by an earlier stanceclf \(signature format 1, now 2\)"):
        train(other, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)


def test_training_gradient_accumulation_keeps_the_loss_scale(tmp_path, base_tokenizer):
    """Batch 8 in one step and batch 2 over 4 accumulated steps see the same loss."""
    losses = {}
    for batch, steps in ((8, 1), (2, 4)):
        folder = tmp_path / f"b{batch}"
        folder.mkdir()
        recipe = load_recipe(write_recipe(folder), [f"training.batch_size={batch}",
                                                    f"training.gradient_accumulation_steps={steps}",
                                                    "training.max_steps=2", "training.eval_every=2",
                                                    "training.learning_rate=1e-9"])
        train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
        state = json.loads((folder / "run" / "checkpoint-2" / "trainer_state.json").read_text())
        losses[batch] = next(entry["loss"] for entry in state["log_history"] if "loss" in entry)
    assert losses[2] == pytest.approx(losses[8], rel=0.35)


def test_training_on_a_built_dataset_records_its_splitter(tmp_path, base_tokenizer):
    from stanceclf.data.dataset import BuildConfig, build_dataset, save_dataset
    from stanceclf.data.sentences import SentenceSplitter

    schema = load_schema("claim-types")
    config = BuildConfig(splitter=SentenceSplitter(max_sentence_chars=500), split_ratios={"train": 0.6, "dev": 0.2,
                                                                                             "test": 0.2})
    dataset, info = build_dataset(toy_corpus(), schema, config)
    save_dataset(dataset, info, schema, tmp_path / "built")
    path = write_recipe(tmp_path)
    path.write_text(path.read_text().replace('inputs = ["toy.jsonl"]', 'dataset = "built"'))
    recipe = load_recipe(path, ["training.max_steps=2", "training.eval_every=2"])
    trained = train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    assert trained.manifest.splitter.max_sentence_chars == 500


def test_training_bad_recipe_names_the_field(tmp_path):
    path = write_recipe(tmp_path)
    with pytest.raises(RecipeError, match="training.learning_rate"):
        load_recipe(path, ['training.learning_rate="fast"'])
    with pytest.raises(RecipeError, match="training.batch_size"):
        load_recipe(write_recipe(tmp_path), ["training.batch_size=0"])


def test_training_positive_weights():
    labels = np.array([[1, 0], [0, 0], [0, 0], [0, 1]] * 5)
    assert positive_weights(labels, "balanced") == pytest.approx([3.0, 3.0])
    assert positive_weights(labels, "sqrt") == pytest.approx([3.0 ** 0.5, 3.0 ** 0.5])
    assert positive_weights(labels, "none") == pytest.approx([1.0, 1.0])


def save_tiny_base(directory, base_tokenizer):
    """A local base-model folder holding an untrained tiny BERT, as a user's own base would be."""
    model = tiny(base_tokenizer)
    model.config.id2label = {0: "LABEL_0", 1: "LABEL_1"}
    model.save_pretrained(directory)
    base_tokenizer.save_pretrained(directory)
    return directory


def test_training_accelerate_launch_two_cpu_processes(tmp_path, base_tokenizer):
    base = save_tiny_base(tmp_path / "tiny-base", base_tokenizer)
    recipe = write_recipe(tmp_path, base=str(base))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    result = subprocess.run(
        # "--multi_gpu" picks accelerate's torchrun launcher; without a GPU it runs two CPU processes
        # over gloo. ("--cpu" would start a single process.)
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "stanceclf.cli", "train", str(recipe), "--no-resume", "--set", "training.epochs=2"],
        env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "model" / "stanceclf.json").read_text())
    assert manifest["base_model"] == str(base)
    train_sentences = next(r["sentences"] for r in manifest["training"]["statistics"] if r["split"] == "train")
    states = [json.loads(p.read_text()) for p in (tmp_path / "run").glob("checkpoint-*/trainer_state.json")]
    steps = max(state["global_step"] for state in states)
    # Two processes share each batch of 8 per process: 2 epochs take ceil(n / 16) steps each, half
    # of what one process would need.
    assert steps == 2 * int(np.ceil(train_sentences / 16))


@pytest.mark.slow
def test_training_real_packaged_base_few_steps(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, base="packaged:all-minilm-l6-v2"),
                         ["training.max_steps=4", "training.eval_every=4", "training.learning_rate=5e-5"])
    trained = train(recipe, progress=False)
    assert trained.model.config.hidden_size == 384 and trained.model.config.num_hidden_layers == 6
    reloaded = StanceModel.from_pretrained(tmp_path / "model")
    predictions = reloaded.classify("The army will attack the city soon. She plays the piano.")
    assert len(predictions) == 2 and set(predictions[0].scores) == set(reloaded.labels)


def test_training_calibrates_on_the_logits_the_served_model_computes(tmp_path, base_tokenizer):
    """Temperatures and thresholds refit from the saved model's own predict_logits on dev are the manifest's."""
    from stanceclf.train.calibration import calibrate
    from stanceclf.train.phases import prepare_dataset

    recipe = load_recipe(write_recipe(tmp_path), ["training.epochs=2"])
    trained = train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    served = StanceModel.from_pretrained(tmp_path / "model")
    dataset, _, _ = prepare_dataset(recipe, load_schema("claim-types"))
    logits = served.predict_logits(list(dataset["dev"]["text"]), batch_size=5)
    temperatures, thresholds = calibrate(logits, np.array(dataset["dev"]["labels"]))
    assert list(temperatures) == pytest.approx([trained.manifest.temperatures[l] for l in served.labels], abs=1e-4)
    assert list(thresholds) == pytest.approx([trained.manifest.thresholds[l] for l in served.labels], abs=1e-4)


def test_training_group_by_length_batches_sentences_of_like_length(tmp_path, base_tokenizer):
    """With ``training.group_by_length`` the training batches carry far less padding (and training runs to
    the end)."""
    rng = random.Random(5)
    long_tail = " and the committee met again to discuss the matter at great length" * 3
    documents = []
    for d in range(30):
        text, spans = "", []
        for _ in range(8):
            sentence = rng.choice(FORECAST + NEUTRAL)
            if rng.random() < 0.4:
                sentence = sentence[:-1] + long_tail + "."
            start = len(text)
            text += sentence + " "
            if any(sentence.startswith(forecast[:-1]) for forecast in FORECAST):
                spans.append(Span(start, start + len(sentence), "prediction", "toy"))
        documents.append(AnnotatedDocument(f"mix{d:02d}", text, spans, ("toy",)))

    padding = {}
    for grouped in (False, True):
        folder = tmp_path / f"grouped-{grouped}"
        folder.mkdir()
        write_recipe(folder)
        write_native(documents, folder / "toy.jsonl")
        recipe = load_recipe(folder / "recipe.toml", [f"training.group_by_length={str(grouped).lower()}",
                                                      "training.max_length=64", "training.max_steps=12",
                                                      "training.eval_every=12"])
        model = tiny(base_tokenizer)
        widths = []
        model.register_forward_pre_hook(
            lambda module, args, kwargs: widths.append(kwargs["attention_mask"].shape[1]
                                                       - kwargs["attention_mask"].sum(1).float().mean().item())
            if module.training else None, with_kwargs=True)
        trained = train(recipe, model=model, tokenizer=base_tokenizer, progress=False)
        assert len(widths) == 12 and trained.manifest.training["recipe"]["training"]["group_by_length"] is grouped
        timing = trained.manifest.training
        assert timing["steps"] == 12 and timing["fit_seconds"] > 0
        assert 0 <= timing["dev_evaluation_seconds"] <= timing["fit_seconds"]
        padding[grouped] = float(np.mean(widths))
    assert padding[True] < 0.5 * padding[False]


def test_training_group_by_length_uses_shuffled_length_groups(tmp_path, base_tokenizer):
    """transformers' own length grouping orders each run of 50 batches long to short (an MPNet LoRA run
    never learned with it): the trainer draws its batches from stanceclf.train.sampling instead."""
    from stanceclf.train.phases import make_trainer, prepared_data
    from stanceclf.train.sampling import ShuffledLengthGroupSampler

    recipe = load_recipe(write_recipe(tmp_path), ["training.group_by_length=true"])
    dataset = prepared_data(recipe, load_schema("claim-types"))[0]
    trainer = make_trainer(recipe, tiny(base_tokenizer), base_tokenizer, dataset, progress=False)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, ShuffledLengthGroupSampler) and sampler.batch_size == 8 and sampler.seed == 3
    assert len(sampler) == len(trainer.train_dataset)


@pytest.mark.parametrize("grouped", [False, True])
def test_training_resumed_in_the_middle_of_an_epoch_sees_the_batches_it_had_not_seen(tmp_path, base_tokenizer,
                                                                                   grouped):
    # 20 steps an epoch: killed after step 25's checkpoint, in the second epoch (the first epoch's order is
    # drawn from a fresh seed in both runs, so it would hide a sampler that ignores the epoch).
    recipe = load_recipe(write_recipe(tmp_path), ["training.max_steps=30", "training.eval_every=25",
                                                  f"training.group_by_length={str(grouped).lower()}"])

    def batches_seen(model) -> list:
        seen = []
        model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(sorted(map(tuple, kwargs["input_ids"].tolist())))
            if module.training else None, with_kwargs=True)
        return seen

    whole = batches_seen(model := tiny(base_tokenizer))
    train(recipe, model=model, tokenizer=base_tokenizer, progress=False)
    run = tmp_path / "run"
    assert json.loads((run / "checkpoint-25" / "trainer_state.json").read_text())["epoch"] == 1.25
    shutil.rmtree(run / "checkpoint-30")
    shutil.rmtree(tmp_path / "model")
    resumed = batches_seen(model := tiny(base_tokenizer, seed=1))
    train(recipe, model=model, tokenizer=base_tokenizer, progress=False)
    assert len(whole) == 30 and resumed == whole[25:]
