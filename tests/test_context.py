"""Sentences read with their context (``[data] context``): training and every prediction path build the same
input, the manifest carries the settings, and a model without context reads exactly as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_training import tiny, write_recipe

from stanceclf.data.context import ContextSettings, contexts_of_rows, sentence_contexts
from stanceclf.data.dataset import BuildConfig, build_dataset, built_contexts
from stanceclf.data.documents import AnnotatedDocument, Span
from stanceclf.data.readers import write_native
from stanceclf.data.schema import load_schema
from stanceclf.errors import RecipeError
from stanceclf.infer.model import StanceModel
from stanceclf.model.manifest import MANIFEST_NAME, ModelManifest
from stanceclf.train.phases import make_trainer, prepare_dataset
from stanceclf.train.recipe import load_recipe
from stanceclf.train.signature import run_signature

READ_AROUND = {"previous": 1, "next": 1, "title": True}
#: A sentence of its own too long for a max_length of 24: cut, with an empty context.
LONG = "The minister said that the army, the navy and the air force " + "would keep on growing and " * 4 + "never stop."


def news(doc_id: str, headline: str, sentences: list[str], spans: tuple[str, ...] = ()) -> AnnotatedDocument:
    """A news file: its headline on the first line, then the article; ``spans`` label the sentences named."""
    text = headline + "\n" + " ".join(sentences)
    return AnnotatedDocument(doc_id, text, [Span(text.index(s), text.index(s) + len(s), "prediction", "t")
                                            for s in spans], ("t",))


ARTICLES = [
    news("a", "Talks collapse in Vienna", ["Experts expect the talks to fail.", "The museum opened a new wing.",
                                           LONG, "She plays the piano."], spans=("Experts expect the talks to fail.",)),
    news("b", "Markets brace for a hard winter", ["Prices are likely to rise next year.",
                                                  "The weather was mild and people walked."]),
    news("c", "One line only", []),
]


def contexts_recipe(tmp_path, *overrides: str):
    """The toy recipe of tests/test_training.py reading context, on ``ARTICLES`` split half and half."""
    path = write_recipe(tmp_path)
    write_native(ARTICLES, tmp_path / "articles.jsonl")
    return load_recipe(path, ['data.inputs=["articles.jsonl"]', "data.split_ratios={train=0.5,dev=0.5}",
                              "data.context={previous=1,next=1,title=true}", *overrides])


def saved_reader(make_tiny_model, directory, context: dict, max_length: int = 24) -> StanceModel:
    """A tiny model that reads ``context``, saved and loaded again (its tokenizer.json, as served)."""
    model = make_tiny_model(max_length=max_length)
    model.manifest = model.manifest.model_copy(update={"context": ContextSettings(**context)})
    return StanceModel.from_pretrained(model.save_pretrained(directory))


def prediction_ids(model: StanceModel, text: str) -> list[list[int]]:
    """The token ids prediction builds for each sentence of ``text``: classify's units, tokenized as it does."""
    units = model.units([text])
    return model.tokenize([u.text for u in units], [u.context for u in units])[0]


# ---- the one rule ---------------------------------------------------------------------------------------
def test_contexts_hold_title_previous_and_next_in_fixed_slots():
    sentences = ["Headline", "First.", "Second.", "Third."]
    assert sentence_contexts(sentences, ContextSettings(**READ_AROUND)) == [
        " |  | First.",  # the title itself: no title, no previous sentence
        " | Headline | Second.",  # the title is its previous sentence: not repeated
        "Headline | First. | Third.",
        "Headline | Second. | ",
    ]
    assert sentence_contexts(sentences, ContextSettings(next=2)) == ["First. Second.", "Second. Third.", "Third.", ""]
    assert sentence_contexts(sentences, ContextSettings()) == [None] * 4


def test_dataset_context_column_is_the_rule_and_rows_rebuild_it():
    schema = load_schema("claim-types")
    dataset, info = build_dataset(ARTICLES, schema, BuildConfig(context=READ_AROUND, split_ratios={"train": 1.0}))
    rows = dataset["train"]
    assert built_contexts(rows) == contexts_of_rows(rows["doc_id"], rows["sentence_index"], rows["text"],
                                                    ContextSettings(**READ_AROUND))
    first = [row for row in rows if row["doc_id"] == "a"]
    assert [row["text"] for row in first] == ["Talks collapse in Vienna", "Experts expect the talks to fail.",
                                              "The museum opened a new wing.", LONG, "She plays the piano."]
    assert first[1]["context"] == " | Talks collapse in Vienna | The museum opened a new wing."
    assert info["build_config"]["context"] == {"previous": 1, "next": 1, "title": True}
    plain, plain_info = build_dataset(ARTICLES, schema, BuildConfig(split_ratios={"train": 1.0}))
    assert "context" not in plain["train"].column_names and "context" not in plain_info["build_config"]
    assert built_contexts(plain["train"]) is None
    assert plain_info["fingerprint"] != info["fingerprint"]


# ---- training and prediction build the same input -----------------------------------------------------------
def test_training_and_prediction_build_the_same_token_ids(tmp_path, base_tokenizer, make_tiny_model):
    recipe = contexts_recipe(tmp_path)
    dataset, _, _ = prepare_dataset(recipe, load_schema("claim-types"))
    trainer = make_trainer(recipe, tiny(base_tokenizer), base_tokenizer, dataset, progress=False)
    trained_on = {}
    for split, encoded in (("train", trainer.train_dataset), ("dev", trainer.eval_dataset)):
        for row, ids in zip(dataset[split], encoded["input_ids"]):
            trained_on.setdefault(row["doc_id"], []).append((row["sentence_index"], list(ids)))
    assert sorted(trained_on) == ["a", "b", "c"]

    reader = saved_reader(make_tiny_model, tmp_path / "reader", READ_AROUND, recipe.training.max_length)
    other = saved_reader(make_tiny_model, tmp_path / "other", {**READ_AROUND, "title": False},
                         recipe.training.max_length)
    differs = False
    for article in ARTICLES:
        training = [ids for _, ids in sorted(trained_on[article.doc_id])]
        assert prediction_ids(reader, article.text) == training
        differs |= prediction_ids(other, article.text) != training
    assert differs  # without the title on one side, the test above fails

    # The long sentence is cut and its context dropped; the others keep theirs, cut to what is left.
    article = [ids for _, ids in sorted(trained_on["a"])]
    assert len(article[3]) == 24 and article[3][-2:] == [base_tokenizer.sep_token_id] * 2
    assert all(len(ids) <= 24 for sentences in trained_on.values() for _, ids in sentences)
    # The pair is the tokenizer's own, where nothing is cut.
    text, context = "She plays the piano.", "The title | The museum."
    assert reader.tokenize([text], [context])[0][0] == base_tokenizer(text, context)["input_ids"]

    # And classify's forward passes read exactly those inputs.
    seen = []
    reader.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.extend(
            [int(t) for t, m in zip(ids, mask) if m] for ids, mask in zip(kwargs["input_ids"], kwargs["attention_mask"])),
        with_kwargs=True)
    reader.classify([article.text for article in ARTICLES])
    assert sorted(seen) == sorted(ids for sentences in trained_on.values() for _, ids in sentences)


# ---- a trained model that reads context ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_tokenizer):
    """A tiny recipe with context, trained, saved and loaded again: ``(model, recipe)``. Its head is then
    scaled up (and the model saved again): two short epochs leave scores that hardly move with the input."""
    from test_explain import responsive

    from stanceclf.train.trainer import train

    tmp_path = tmp_path_factory.mktemp("context-training")
    recipe = contexts_recipe(tmp_path, "training.epochs=2", "training.max_length=48")
    train(recipe, model=tiny(base_tokenizer), tokenizer=base_tokenizer, progress=False)
    model = responsive(StanceModel.from_pretrained(tmp_path / "model"))
    return StanceModel.from_pretrained(model.save_pretrained(tmp_path / "responsive")), recipe


def test_trained_model_carries_its_context_and_every_path_scores_alike(trained, tmp_path):
    from stanceclf.infer.ray_engine import SentencePredictor
    from stanceclf.infer.scoring import score_corpus

    model, _ = trained
    assert model.manifest.context == ContextSettings(**READ_AROUND)
    saved = json.loads((model.path / MANIFEST_NAME).read_text())
    assert saved["context"] == READ_AROUND and saved["format_version"] == 3
    assert saved["training"]["recipe"]["data"]["context"] == READ_AROUND

    texts = [article.text for article in ARTICLES]
    classified = [[p.scores for p in predictions] for predictions in model.classify(texts)]
    folder = tmp_path / "corpus"
    folder.mkdir()
    for article in ARTICLES:
        (folder / f"{article.doc_id}.txt").write_text(article.text, encoding="utf-8")
    score_corpus([folder], tmp_path / "scores.jsonl", model, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    scored = {}
    for row in rows:
        scored.setdefault(row["doc_id"], []).append({label: row[f"score_{label}"] for label in model.labels})
    assert [scored[article.doc_id] for article in ARTICLES] == classified  # a text file's id: its name, less .txt

    import pyarrow as pa

    table = SentencePredictor(str(model.path))(pa.table({"doc_id": ["a", "b", "c"], "text": texts}))
    on_ray = table.to_pylist()
    assert [{label: row[f"score_{label}"] for label in model.labels} for row in on_ray] == \
        [scores for document in classified for scores in document]

    # Read alone, a sentence scores otherwise: the paths above did read context.
    sentence = "Experts expect the talks to fail."
    [alone] = model.classify(sentence, split_sentences=False)
    assert model.units([sentence], split_sentences=False)[0].context is None
    assert list(alone.scores.values()) == pytest.approx(model.predict_proba([sentence])[0], abs=1e-6)
    assert max(abs(alone.scores[label] - classified[0][1][label]) for label in model.labels) > 1e-4


def test_served_scores_are_classify_scores(trained):
    import httpx
    from test_serve import server_in_process

    model, _ = trained
    texts = [article.text for article in ARTICLES]
    expected = model.classify(texts)
    with server_in_process(model.path) as url:
        answer = httpx.post(f"{url}/v1/classify", json={"texts": texts}, timeout=60).json()
        alone = httpx.post(f"{url}/v1/classify", json={"text": ARTICLES[1].text, "split_sentences": False},
                           timeout=60).json()
    for served, wanted in zip(answer["results"], expected):
        assert [p["text"] for p in served] == [p.text for p in wanted]
        for got, want in zip(served, wanted):
            assert got["scores"] == pytest.approx(want.scores, abs=1e-6)
    [[whole]] = alone["results"]
    assert list(whole["scores"].values()) == pytest.approx(model.predict_proba([ARTICLES[1].text])[0], abs=1e-6)


def test_explanations_and_evaluation_read_the_context(trained):
    from stanceclf.infer.explain import explain, without_words, word_spans
    from stanceclf.model.decision import probabilities
    from stanceclf.model.metrics import expected_calibration_error
    from stanceclf.train.evaluation import evaluate_model
    from stanceclf.train.phases import calibrate_and_evaluate

    model, recipe = trained
    label = model.labels[0]
    explained = explain(ARTICLES[0].text, label=label, model=model)
    assert [e.scores for e in explained] == [p.scores for p in model.classify(ARTICLES[0].text)]
    assert explained[1].note is None
    # A word's weight: the score in context minus the score without the word, in the same context.
    unit = model.units([ARTICLES[0].text])[1]
    first = explained[1].explanations[label].words[0]
    variant = without_words(unit.text, word_spans(unit.text), [0])
    [[without]] = model.proba_and_truncation([variant], contexts=[unit.context])[0][:, [0]]
    assert first.weight == pytest.approx(explained[1].scores[label] - without, abs=2e-6)
    [from_prediction] = explain(model.classify(ARTICLES[0].text)[1:2], label=label, model=model)
    assert "without context" in from_prediction.note
    weighed = explain(ARTICLES[0].text, label=label, model=model, method="integrated_gradients")
    assert [len(e.explanations[label].words) for e in weighed] == [len(e.explanations[label].words) for e in explained]

    # stanceclf evaluate: each dev sentence scored as classify scores it in its document.
    schema = load_schema("claim-types")
    dataset, _, _ = prepare_dataset(recipe, schema)
    dev = dataset["dev"]
    _, _, probs = evaluate_model(model, dev)
    in_documents = {}
    for doc_id in dict.fromkeys(dev["doc_id"]):
        [article] = [a for a in ARTICLES if a.doc_id == doc_id]
        in_documents[doc_id] = [list(p.scores.values()) for p in model.classify(article.text)]
    expected = [in_documents[doc_id][index] for doc_id, index in zip(dev["doc_id"], dev["sentence_index"])]
    assert probs == pytest.approx(np.array(expected), abs=1e-6)
    assert np.abs(probs - model.predict_proba(list(dev["text"]))).max() > 1e-4

    # Training's own evaluation (calibration, the manifest's metrics) reads the dataset's contexts.
    evaluated = calibrate_and_evaluate(model.model, model.tokenizer, dataset, schema, model.max_length)
    y_true = np.array(dev["labels"])
    ones = np.ones(len(model.labels))

    def ece(contexts) -> float:
        return expected_calibration_error(y_true, probabilities(model.predict_logits(list(dev["text"]),
                                                                                     contexts=contexts), ones))

    measured = evaluated.manifest.metrics["dev"]["ece_before_calibration"]
    assert measured == ece(model.example_contexts(dev)) != ece(None)


# ---- without context: as before -----------------------------------------------------------------------------
def test_a_manifest_without_context_loads_unchanged_and_reads_sentences_alone(tiny_model_dir):
    text = (tiny_model_dir / MANIFEST_NAME).read_text()
    assert "context" not in json.loads(text)
    manifest = ModelManifest.read(tiny_model_dir)
    assert not manifest.context.enabled and manifest.to_json(indent=2) + "\n" == text
    model = StanceModel.from_pretrained(tiny_model_dir)
    units = model.units([ARTICLES[0].text])
    assert all(unit.context is None for unit in units)
    assert model.tokenize([u.text for u in units], [u.context for u in units]) == model.tokenize([u.text for u in units])


def test_context_settings_are_signed_and_off_signs_as_before(tmp_path):
    plain = load_recipe(write_recipe(tmp_path))
    off = load_recipe(write_recipe(tmp_path), ["data.context={previous=0}"])
    reading = load_recipe(write_recipe(tmp_path), ["data.context={previous=1}"])
    assert "context" not in run_signature(plain, "fp")["recipe"]["data"]
    assert run_signature(off, "fp") == run_signature(plain, "fp")
    assert run_signature(reading, "fp") != run_signature(plain, "fp")


@pytest.mark.parametrize("setting, problem", [
    ("{previous=-1}", r"data\.context\.previous"),
    ("{before=1}", r"data\.context\.before"),
    ("{next=99}", r"data\.context\.next"),
    ("3", r"data\.context"),
])
def test_a_bad_context_setting_is_a_coded_recipe_error(tmp_path, setting, problem):
    with pytest.raises(RecipeError, match=r"\[E010\] .*recipe\.toml: .*" + problem):
        load_recipe(write_recipe(tmp_path), [f"data.context={setting}"])


def test_context_with_distillation_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"\[E010\].*data\.context with \[distill\]"):
        load_recipe(write_recipe(tmp_path), ["data.context={title=true}", "distill.teacher=teacher",
                                             "distill.soft_on_labelled=true"])


def test_suggest_reads_sentences_in_context_as_score_does(trained, tmp_path):
    """Active learning ranks documents by the scores the model gives when it is used: with context."""
    from stanceclf.infer.suggest import sentence_uncertainty, suggest

    model, _ = trained
    corpus = tmp_path / "pool.jsonl"
    corpus.write_text("".join(json.dumps({"id": a.doc_id, "text": a.text}) + "\n" for a in ARTICLES), encoding="utf-8")
    picked = suggest([corpus], model, strategy="uncertainty", n=len(ARTICLES), progress=False)
    expected = {}
    for article, predictions in zip(ARTICLES, model.classify([a.text for a in ARTICLES])):
        scores = np.array([[p.scores[label] for label in model.labels] for p in predictions])
        expected[article.doc_id] = float(sentence_uncertainty(scores, model.threshold_vector).mean())
    assert {s.doc_id: s.priority for s in picked.suggestions} == pytest.approx(expected, abs=1e-6)
    alone = {a.doc_id: float(sentence_uncertainty(model.predict_proba([s.text for s in model.split(a.text)]),
                                                  model.threshold_vector).mean()) for a in ARTICLES}
    assert max(abs(alone[d] - expected[d]) for d in expected) > 1e-4  # read alone, they rank otherwise
