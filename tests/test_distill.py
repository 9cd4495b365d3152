"""Distillation: teachers' cached scores, the mixed gold/soft loss, shallower students, the recipe section."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from stanceclf.data.schema import load_schema
from stanceclf.errors import InputRecordError, RecipeError
from stanceclf.infer.model import StanceModel
from stanceclf.train import distill
from stanceclf.train.recipe import load_recipe
from stanceclf.train.phases import build_base_model
from stanceclf.train.trainer import train

from conftest import REPO, interrupt_on_call, tiny_config
from test_training import write_recipe

UNLABELLED = [
    {"id": "u1", "text": "The generals expect a long war. Markets may fall further next week."},
    {"id": "u2", "text": "Analysts warned of a dangerous escalation. She plays the piano."},  # the last one is labelled data
    {"id": "u3", "text": "The generals expect a long war. A new bridge opened downtown."},    # a repeated sentence
]
UNLABELLED_SENTENCES = 4  # distinct, less the one that is also in the labelled data


def distill_recipe(tmp_path, teacher_dir, extra: str = "", overrides=()):
    path = write_recipe(tmp_path)
    (tmp_path / "unlabelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in UNLABELLED))
    path.write_text(path.read_text() + f'''
[distill]
teacher = "{teacher_dir}"
unlabelled = ["unlabelled.jsonl"]
alpha = 0.3
{extra}
''')
    return load_recipe(path, ["training.max_steps=4", "training.eval_every=4", *overrides])


def student(base_tokenizer, layers: int = 6, architecture: str = "bert", seed: int = 0):
    import torch

    torch.manual_seed(seed)
    config = tiny_config(base_tokenizer.vocab_size, architecture=architecture, layers=layers)
    return build_base_model("unused", load_schema("claim-types"), config=config)


@pytest.fixture
def count_teacher_sentences(monkeypatch):
    """Counts the sentences each run gives to the teachers (the seam every teacher score goes through)."""
    scored = []
    real = distill.teacher_probabilities

    def counting(teacher, texts, batch_size):
        scored.extend(texts)
        return real(teacher, texts, batch_size)

    monkeypatch.setattr(distill, "teacher_probabilities", counting)
    return scored


def test_distill_end_to_end_caches_teacher_scores_and_records_teachers(tmp_path, base_tokenizer, tiny_arch_model_dir,
                                                                       count_teacher_sentences):
    # The teacher named relative to the recipe's folder, as the project's recipes name theirs.
    relative = os.path.relpath(tiny_arch_model_dir, tmp_path)
    recipe = distill_recipe(tmp_path, relative, 'student_layers = 3\nteacher_recipe = "teacher.toml"')
    trained = train(recipe, model=student(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    assert len(count_teacher_sentences) == UNLABELLED_SENTENCES
    assert "She plays the piano." not in count_teacher_sentences
    record = StanceModel.from_pretrained(tmp_path / "model").manifest.training["distillation"]
    # As the recipe writes it, not this machine's absolute path.
    assert record["teachers"][0]["path"] == relative and record["teachers"][0]["recipe"] == "teacher.toml"
    assert record["teachers"][0]["base_model"].startswith("tiny-random-")
    assert record["unlabelled"] == [str(path) for path in recipe.distill.unlabelled]  # as written: no machine path
    assert not any(Path(path).is_absolute() for path in record["unlabelled"])
    assert record["alpha"] == 0.3 and record["student_layers"] == [0, 2, 4]
    assert record["soft_rows"] == UNLABELLED_SENTENCES and record["unlabelled_left_out_as_labelled"] == 1
    assert record["unlabelled_sentences_read"] == 6 and record["unlabelled_documents"] == 3
    assert trained.model.config.num_hidden_layers == 3
    assert json.loads((tmp_path / "model" / "config.json").read_text())["num_hidden_layers"] == 3
    from typer.testing import CliRunner

    from stanceclf.cli import app

    shown = CliRunner().invoke(app, ["info", str(tmp_path / "model")]).output
    assert f"distilled from {relative} (recipe teacher.toml) (alpha 0.3, layers [0, 2, 4] of its base)" in shown
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"Distilled from `{relative}` (base" in card and "recipe `teacher.toml`" in card and "alpha 0.3" in card
    cached = list((tmp_path / "run" / "teacher-scores").glob("*/part-*.parquet"))
    assert cached, "the teacher's scores are cached in the run folder"

    # A second run (fresh student, checkpoints cleared) reads the teacher's scores back.
    count_teacher_sentences.clear()
    train(recipe, model=student(base_tokenizer, seed=1), tokenizer=base_tokenizer, progress=False, resume=False)
    assert count_teacher_sentences == []


def test_distill_students_of_one_teacher_share_a_scores_dir(tmp_path, base_tokenizer, tiny_model_dir,
                                                            count_teacher_sentences):
    first = distill_recipe(tmp_path, tiny_model_dir, 'scores_dir = "shared-scores"', ["training.max_steps=2"])
    train(first, model=student(base_tokenizer, layers=2), tokenizer=base_tokenizer, progress=False)
    assert len(count_teacher_sentences) == UNLABELLED_SENTENCES
    assert list((tmp_path / "shared-scores").glob("*/part-*.parquet"))
    second = load_recipe(first.source, ["run_dir=other-run", "output_dir=other-model", "distill.student_layers=1",
                                        "training.max_steps=2", "training.eval_every=2"])
    train(second, model=student(base_tokenizer, layers=2), tokenizer=base_tokenizer, progress=False)
    assert len(count_teacher_sentences) == UNLABELLED_SENTENCES  # nothing scored again


def test_distill_interrupted_teacher_scoring_goes_on_from_its_last_part(tmp_path, base_tokenizer, tiny_model_dir,
                                                                        count_teacher_sentences, monkeypatch):
    recipe = distill_recipe(tmp_path, tiny_model_dir)
    monkeypatch.setattr(distill, "CHUNK_SENTENCES", 2)
    real = interrupt_on_call(monkeypatch, distill, "teacher_probabilities", after=2)  # Ctrl-C in the 2nd chunk
    with pytest.raises(KeyboardInterrupt):
        train(recipe, model=student(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    monkeypatch.setattr(distill, "teacher_probabilities", real)
    teacher = StanceModel.from_pretrained(tiny_model_dir)
    cache = distill.TeacherScoreCache(tmp_path / "run" / "teacher-scores", teacher)
    assert len(cache._load()) == 2
    scored = []
    monkeypatch.setattr(distill, "teacher_probabilities", lambda t, texts, b: scored.extend(texts) or real(t, texts, b))
    train(recipe, model=student(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    assert len(scored) == UNLABELLED_SENTENCES - 2
    # The cached probabilities are the teacher's calibrated ones.
    texts = [s for s in cache._load()]
    np.testing.assert_allclose(cache.probabilities(texts, teacher.labels, 8, False),
                               teacher.predict_proba(texts), atol=1e-6)


def test_distill_ensemble_averages_teachers_in_the_students_label_order(tmp_path, make_tiny_model):
    import tomllib

    import tomli_w

    schema = load_schema("claim-types")
    # The second teacher has the same labels in reverse order.
    reversed_schema = tomllib.loads((REPO / "labels" / "claim-types.toml").read_text())
    reversed_schema["labels"].reverse()
    (tmp_path / "reversed.toml").write_text(tomli_w.dumps(reversed_schema))
    first = make_tiny_model(seed=1).save_pretrained(tmp_path / "t1")
    second = make_tiny_model(str(tmp_path / "reversed.toml"), seed=2, temperatures={
        "prediction": 2.0, "threat_framing": 0.5, "policy_attribution": 1.0}).save_pretrained(tmp_path / "t2")
    assert StanceModel.from_pretrained(second).labels == schema.label_names[::-1]
    texts = ["Prices will rise.", "The army warned of a threat."]
    probs = [StanceModel.from_pretrained(first).predict_proba(texts),
             StanceModel.from_pretrained(second).predict_proba(texts)[:, ::-1]]
    (tmp_path / "ensemble.jsonl").write_text(json.dumps({"text": texts[1]}) + "\n")
    recipe = distill_recipe(tmp_path, first, overrides=[f'distill.teacher=["{first}", "{second}"]',
                                                        'distill.unlabelled=["ensemble.jsonl"]',
                                                        "distill.soft_on_labelled=true"])
    dataset = {"train": _split(texts[:1], [[1, 0, 0]]), "dev": _split(["x"], [[0, 0, 0]])}
    result = distill.prepare_distillation(recipe, schema, _Splits(dataset), _Lines(), progress=False)
    rows = result.train_rows
    soft = [row for row in rows if row["text"] == texts[1]][0]
    np.testing.assert_allclose(soft["labels"], (probs[0][1] + probs[1][1]) / 2, atol=1e-6)
    assert [row["labels"] for row in rows if row["text"] == texts[0]][0] == [1.0, 0.0, 0.0]  # gold first
    assert len(result.record["teachers"]) == 2


class _Lines:
    """A splitter that takes each line of the unlabelled inputs as one sentence."""

    def split(self, text):
        from types import SimpleNamespace

        return [SimpleNamespace(text=line) for line in text.splitlines() if line.strip()]


class _Splits(dict):
    """Stands in for a DatasetDict: a dict of splits."""


def _split(texts, labels):
    from datasets import Dataset

    return Dataset.from_dict({"text": texts, "labels": labels})


def test_distill_mixing_weights_give_alpha_in_expectation():
    gold, soft = distill.mixing_weights(100, 900, 0.3)
    assert 100 * gold / 1000 == pytest.approx(0.3) and 900 * soft / 1000 == pytest.approx(0.7)
    assert distill.mixing_weights(10, 10, 0.0) == (0.0, 2.0)


def test_distill_weighted_loss_is_alpha_mix_of_gold_and_soft(tmp_path, base_tokenizer):
    import torch
    from transformers import TrainingArguments

    from stanceclf.train.phases import _make_trainer_class

    torch.manual_seed(0)
    model = student(base_tokenizer, layers=2).eval()
    trainer = _make_trainer_class()(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                        report_to=[]), pos_weight=[1.0, 1.0, 1.0])
    encoded = base_tokenizer(["Prices will rise.", "War is coming.", "The museum opened."], padding=True,
                             return_tensors="pt", return_token_type_ids=False)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.7, 0.2, 0.1], [0.05, 0.9, 0.3]])
    gold, soft = distill.mixing_weights(1, 2, 0.25)
    inputs = {**encoded, "labels": targets, "weight": torch.tensor([gold, soft, soft])}
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(inputs))
        logits = model(**encoded).logits
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
    assert loss.item() == pytest.approx(0.25 * per_row[0].item() + 0.75 * per_row[1:].mean().item(), rel=1e-5)


@pytest.mark.parametrize("layers, kept", [(3, [0, 2, 4]), ([1, 3, 5], [1, 3, 5]), (2, [0, 3])])
def test_distill_student_layers_copies_the_chosen_layers(base_tokenizer, architecture, layers, kept):
    import torch

    base = student(base_tokenizer, layers=6, architecture=architecture)
    original = {name: value.clone() for name, value in base.state_dict().items()}
    shallow, chosen = distill.student_model(base, layers)
    assert chosen == kept and shallow.config.num_hidden_layers == len(kept)
    state = shallow.state_dict()
    prefix = f"{shallow.base_model_prefix}.encoder.layer."
    for new, old in enumerate(kept):
        for name, value in original.items():
            if name.startswith(f"{prefix}{old}."):
                assert torch.equal(state[name.replace(f"{prefix}{old}.", f"{prefix}{new}.")], value), name
    assert not any(name.startswith(f"{prefix}{len(kept)}.") for name in state)
    # Everything outside the layers (embeddings, head) is the base's.
    for name, value in original.items():
        if not name.startswith(prefix):
            assert torch.equal(state[name], value), name


def test_distill_student_layers_refused_where_not_supported(base_tokenizer):
    from transformers import DistilBertConfig

    config = DistilBertConfig(vocab_size=base_tokenizer.vocab_size, dim=32, n_layers=4, n_heads=2, hidden_dim=64)
    model = build_base_model("unused", load_schema("claim-types"), config=config)
    with pytest.raises(RecipeError, match=r"\[E010\].*cannot build a student with fewer layers from a 'distilbert'"):
        distill.student_model(model, 2)
    with pytest.raises(RecipeError, match="layers the 6-layer base does not have"):
        distill.student_model(student(base_tokenizer), [0, 6])
    with pytest.raises(RecipeError, match="more than the base's 6 layers"):
        distill.student_model(student(base_tokenizer), 7)


def test_distill_teacher_with_other_labels_is_refused(tmp_path, base_tokenizer, make_tiny_model):
    teacher = make_tiny_model("ptc-propaganda").save_pretrained(tmp_path / "ptc-teacher")
    recipe = distill_recipe(tmp_path, teacher)
    with pytest.raises(RecipeError, match=r"distill.teacher .* has the labels \['propaganda'\]"):
        train(recipe, model=student(base_tokenizer, layers=2), tokenizer=base_tokenizer, progress=False)


def test_distill_teacher_that_reads_context_is_refused(tmp_path, base_tokenizer, make_tiny_model):
    """Teacher scores are cached by sentence alone: a teacher trained on sentences in context would be
    scored on inputs it never reads."""
    from stanceclf.data.context import ContextSettings

    teacher = make_tiny_model()
    teacher.manifest = teacher.manifest.model_copy(update={"context": ContextSettings(previous=1)})
    recipe = distill_recipe(tmp_path, teacher.save_pretrained(tmp_path / "context-teacher"))
    with pytest.raises(RecipeError, match=r"distill.teacher .* reads each sentence with context"):
        train(recipe, model=student(base_tokenizer, layers=2), tokenizer=base_tokenizer, progress=False)


def test_distill_bad_unlabelled_record_names_it(tmp_path, base_tokenizer, tiny_model_dir):
    recipe = distill_recipe(tmp_path, tiny_model_dir)
    with open(tmp_path / "unlabelled.jsonl", "a") as handle:
        handle.write(json.dumps({"id": "empty", "text": "  "}) + "\n")
    with pytest.raises(InputRecordError, match=r"\[E030\] record 3 \(.*unlabelled.jsonl:4, id 'empty'\): text is "
                                               r"empty.*; set distill.on_error = \"skip\" in the recipe"):
        train(recipe, model=student(base_tokenizer, layers=2), tokenizer=base_tokenizer, progress=False)
    skipping = load_recipe(recipe.source, ["training.max_steps=2", "training.eval_every=2", 'distill.on_error="skip"'])
    trained = train(skipping, model=student(base_tokenizer, layers=2), tokenizer=base_tokenizer, progress=False)
    assert trained.manifest.training["distillation"]["unlabelled_skipped"] == 1


@pytest.mark.parametrize("change, message", [
    ("distill.unlabelled=[]", "distill needs unlabelled inputs"),
    ("distill.alpha=1.0", "distill.alpha"),
    ("distill.student_layers=[2, 1]", "increasing list"),
    ("distill.student_layers=0", "positive count"),
    ('distill.teacher_backend="int4"', "teacher_backend must be one of torch, bf16, onnx, int8, auto"),
])
def test_distill_recipe_section_validated_before_work(tmp_path, tiny_model_dir, change, message):
    with pytest.raises(RecipeError, match=message):
        distill_recipe(tmp_path, tiny_model_dir, overrides=[change])


def test_distill_missing_unlabelled_input_is_a_recipe_error(tmp_path, base_tokenizer, tiny_model_dir):
    recipe = distill_recipe(tmp_path, tiny_model_dir, overrides=['distill.unlabelled=["nowhere.jsonl"]'])
    with pytest.raises(RecipeError, match=r"distill.unlabelled: .*input not found"):
        train(recipe, model=student(base_tokenizer, layers=2), tokenizer=base_tokenizer, progress=False)


def test_distill_augment_labelled_scores_noisy_copies_of_train_sentences_only(tmp_path, tiny_model_dir,
                                                                            count_teacher_sentences):
    train_texts = ["Moscow will answer any new deployment in Poland with force, the minister said.",
                   "Officials say the sanctions aim to halve the oil revenue of the Kremlin."]
    held_out = ["Analysts expect the ceasefire talks in Geneva to collapse before the winter.",
                "The drone attacks pose a grave danger to the power grid across the region."]
    (tmp_path / "other.jsonl").write_text(json.dumps({"text": "A new bridge opened downtown."}) + "\n")
    recipe = distill_recipe(tmp_path, tiny_model_dir, "augment_labelled = 3",
                            ['distill.unlabelled=["other.jsonl"]'])
    dataset = {"train": _split(train_texts, [[1, 0, 0], [0, 0, 1]]), "dev": _split(held_out[:1], [[1, 0, 0]]),
               "test": _split(held_out[1:], [[0, 1, 0]])}
    result = distill.prepare_distillation(recipe, load_schema("claim-types"), _Splits(dataset), _Lines(),
                                          progress=False)
    copies = count_teacher_sentences[1:]
    assert count_teacher_sentences[0] == "A new bridge opened downtown."
    assert len(copies) == 6 == result.record["augmented_rows"] and result.record["augment_labelled"] == 3
    assert result.record["soft_rows"] == 7 and len(result.train_rows) == 2 + 7
    for copy in copies:
        # Made from a training sentence's words, in order: a dev or test sentence never feeds the student.
        assert any(_subsequence(copy.split(), source.split()) for source in train_texts), copy
        assert copy not in train_texts
    # Copies are taught by the teacher only: their rows carry the soft weight.
    weights = {row["text"]: row["weight"] for row in result.train_rows}
    assert {weights[c] for c in copies} == {result.record["row_weights"]["soft"]}


def test_distill_augment_labelled_never_copies_held_out_or_already_scored_sentences(
        tmp_path, tiny_model_dir, count_teacher_sentences):
    # Wire copy: a test sentence repeated inside a training sentence. Copies of that training sentence
    # would be near copies of the test sentence, scored by the teacher and learned by the student.
    test_sentence = "Analysts expect the ceasefire talks in Geneva to collapse."
    short = "Kyiv expects more aid soon."  # 5 words: its copies are its 5 four-word subsequences
    dev_sentence, unlabelled = "Kyiv expects more soon.", "Kyiv expects more aid"
    (tmp_path / "other.jsonl").write_text(json.dumps({"text": unlabelled}) + "\n")
    recipe = distill_recipe(tmp_path, tiny_model_dir, "augment_labelled = 40",
                            ['distill.unlabelled=["other.jsonl"]'])
    dataset = {"train": _split([f"{test_sentence}  Reuters reported on Monday.", short], [[1, 0, 0], [1, 0, 0]]),
               "dev": _split([dev_sentence], [[1, 0, 0]]), "test": _split([test_sentence], [[1, 0, 0]])}
    result = distill.prepare_distillation(recipe, load_schema("claim-types"), _Splits(dataset), _Lines(),
                                          progress=False)
    assert count_teacher_sentences[0] == unlabelled
    # Neither the dev sentence nor the unlabelled one (already scored) is drawn again as a copy.
    assert sorted(count_teacher_sentences[1:]) == sorted(["Kyiv expects aid soon.", "Kyiv more aid soon.",
                                                          "expects more aid soon."])
    assert result.record["augmented_rows"] == 3


def test_distill_signature_changes_with_the_sentences_the_teachers_score(tmp_path, tiny_model_dir):
    # Same teachers, other unlabelled text: other training rows, so a checkpoint must not be resumed.
    dataset = _Splits({"train": _split(["Officials say the sanctions aim to halve the oil revenue."], [[0, 0, 1]]),
                       "dev": _split(["Analysts expect the talks to collapse."], [[1, 0, 0]])})

    def signature(unlabelled_text):
        (tmp_path / "other.jsonl").write_text(json.dumps({"text": unlabelled_text}) + "\n")
        recipe = distill_recipe(tmp_path, tiny_model_dir, overrides=['distill.unlabelled=["other.jsonl"]'])
        return distill.prepare_distillation(recipe, load_schema("claim-types"), dataset, _Lines(),
                                            progress=False).signature

    first = signature("A new bridge opened downtown.")
    assert signature("A new bridge opened downtown.") == first
    assert signature("The old bridge closed for repairs.") != first


def test_distill_augment_labelled_with_nothing_to_score_says_why(tmp_path, tiny_model_dir):
    recipe = distill_recipe(tmp_path, tiny_model_dir, "augment_labelled = 3",
                            ["distill.unlabelled=[]", "distill.soft_on_labelled=false"])
    dataset = _Splits({"train": _split(["Kyiv expects aid."], [[1, 0, 0]]), "dev": _split(["No."], [[0, 0, 0]])})
    with pytest.raises(RecipeError, match=r"no training sentence is long enough for a noisy copy \(more than 4"):
        distill.prepare_distillation(recipe, load_schema("claim-types"), dataset, _Lines(), progress=False)


def _subsequence(words: list[str], of: list[str]) -> bool:
    remaining = iter(of)
    return all(word in remaining for word in words)


def test_distill_unlabelled_pool_is_read_as_score_reads_a_corpus(tmp_path, tiny_model_dir, caplog):
    """Skipped records are named and counted; ids may repeat (an article in two scrapes): nothing is keyed by them."""
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "x", "text": "Prices will rise.\nRates may fall."}) + "\n"
                                      + json.dumps({"id": "y", "text": "   "}) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "x", "text": "Rates may fall.\nTalks resume."}) + "\n")
    recipe = distill_recipe(tmp_path, tiny_model_dir, overrides=['distill.unlabelled=["a.jsonl", "b.jsonl"]',
                                                                 'distill.on_error="skip"'])
    sentences, counts = distill.unlabelled_sentences(recipe, _Lines(), exclude={"Talks resume."})
    assert sentences == ["Prices will rise.", "Rates may fall."]
    assert counts == {"unlabelled_documents": 2, "unlabelled_skipped": 1, "unlabelled_sentences_read": 4,
                      "unlabelled_left_out_as_labelled": 1, "unlabelled_sentences": 2}
    assert "distill: skipped record 1 (" in caplog.text and "a.jsonl:2, id 'y'): text is empty" in caplog.text


def test_distill_max_unlabelled_draws_a_seeded_sample_of_the_distinct_sentences(tmp_path, tiny_model_dir):
    lines = [f"Sentence number {n} of the pool." for n in range(40)]
    (tmp_path / "pool.jsonl").write_text(json.dumps({"id": "p", "text": "\n".join(lines + lines[:5])}) + "\n")
    overrides = ['distill.unlabelled=["pool.jsonl"]', "distill.max_unlabelled=10"]
    recipe = distill_recipe(tmp_path, tiny_model_dir, overrides=overrides)
    sentences, counts = distill.unlabelled_sentences(recipe, _Lines(), exclude={lines[0]})
    assert len(sentences) == len(set(sentences)) == 10 and set(sentences) < set(lines[1:])
    assert sentences == sorted(sentences, key=lines.index)  # in reading order
    assert counts["unlabelled_sentences_available"] == 39 and counts["unlabelled_sentences"] == 10
    assert distill.unlabelled_sentences(recipe, _Lines(), exclude={lines[0]})[0] == sentences  # the same draw
    reseeded = distill_recipe(tmp_path, tiny_model_dir, overrides=[*overrides, "seed=14"])
    assert distill.unlabelled_sentences(reseeded, _Lines(), exclude={lines[0]})[0] != sentences
    everything = distill_recipe(tmp_path, tiny_model_dir, overrides=['distill.unlabelled=["pool.jsonl"]',
                                                                     "distill.max_unlabelled=100"])
    assert len(distill.unlabelled_sentences(everything, _Lines(), exclude=set())[0]) == 40
