"""Explanations: a weight per word for each flagged label, on the forward pass the backend serves."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from stanceclf.cli import app
from stanceclf.errors import ExplainError
from stanceclf.infer.explain import explain, without_words, word_spans
from stanceclf.infer.model import StanceModel

runner = CliRunner()
TEXT = "NATO will probably expand again next year. Moscow warned of a dangerous escalation.\nTalks resumed."
SENTENCE = "Moscow warned that the war-torn region's economy could collapse, officials said."


def responsive(model: StanceModel, scale: float = 300.0) -> StanceModel:
    """``model`` with its output layer scaled up and centred: a tiny random model's scores hardly move with its
    input (by about 1e-5), too little for weights reported to six decimals."""
    import torch

    head = model.model.classifier
    head = getattr(head, "out_proj", head)
    with torch.no_grad():
        head.weight *= scale
        head.bias.zero_()
        head.bias -= torch.tensor(model.predict_logits([TEXT, SENTENCE, "Talks resumed."]).mean(axis=0))
    return model


@pytest.fixture
def tiny_model(make_tiny_model, tmp_path):
    model = responsive(make_tiny_model())
    return StanceModel.from_pretrained(model.save_pretrained(tmp_path / "tiny"))


@pytest.fixture
def tiny_model_dir(tiny_model):
    return tiny_model.path


def _flagging(make_tiny_model, first: float = 0.0, **options):
    """A tiny model that flags its first label on every sentence and no other."""
    labels = make_tiny_model().labels
    return responsive(make_tiny_model(thresholds={label: (first if i == 0 else 1.0) for i, label in enumerate(labels)},
                                      **options))


# ---- words --------------------------------------------------------------------------------------------------
def test_explain_words_are_words_not_word_pieces():
    text = "The war-torn region's economy (GDP) shrank 3.5%."
    assert [text[s:e] for s, e in word_spans(text)] == [
        "The", "war-torn", "region's", "economy", "(", "GDP", ")", "shrank", "3", ".", "5", "%", "."]


def test_explain_without_words_leaves_the_other_words_as_they_were():
    text = "NATO will  expand (again),\nsoon."
    spans = word_spans(text)
    words = [text[s:e] for s, e in spans]
    assert without_words(text, spans, [words.index("will")]) == "NATO expand (again),\nsoon."
    assert without_words(text, spans, [words.index("again")]) == "NATO will  expand (),\nsoon."
    assert without_words(text, spans, [0]) == "will  expand (again),\nsoon."
    assert without_words(text, spans, range(len(spans))) == ""
    assert without_words(text, spans, [1, 2]) == "NATO (again),\nsoon."


# ---- occlusion ----------------------------------------------------------------------------------------------
def test_explain_occlusion_weight_is_the_score_drop_without_the_word(tiny_model):
    label = tiny_model.labels[1]
    [result] = explain(SENTENCE, label=label, model=tiny_model)
    words = result.explanations[label].words
    spans = word_spans(SENTENCE)
    assert [w.text for w in words] == [SENTENCE[s:e] for s, e in spans]
    j = tiny_model.labels.index(label)
    variants = [SENTENCE] + [without_words(SENTENCE, spans, [i]) for i in range(len(spans))]
    probs = tiny_model.predict_proba(variants)[:, j].astype(np.float64)
    assert np.allclose([w.weight for w in words], probs[0] - probs[1:], atol=2e-6)
    assert result.explanations[label].score == pytest.approx(probs[0], abs=1e-6)
    assert any(abs(w.weight) > 1e-4 for w in words), "a random model still moves with its input"


def test_explain_text_explains_each_flagged_label_with_offsets_into_the_text(make_tiny_model):
    model = _flagging(make_tiny_model)
    results = explain(TEXT, model=model)
    predictions = model.classify(TEXT)
    assert [(r.start, r.end, r.labels) for r in results] == [(p.start, p.end, p.labels) for p in predictions]
    first = model.labels[0]
    for result in results:
        assert list(result.explanations) == [first] and result.explanations[first].flagged
        assert result.method == "occlusion" and result.backend == "torch" and result.note is None
        for word in result.explanations[first].words:
            assert TEXT[word.start:word.end] == word.text


def test_explain_names_no_label_where_none_is_flagged(make_tiny_model):
    model = _flagging(make_tiny_model, first=1.0)
    results = explain(TEXT, model=model)
    assert results and all(r.explanations == {} for r in results)


def test_explain_a_prediction_explains_its_labels(make_tiny_model):
    model = _flagging(make_tiny_model)
    predictions = model.classify(TEXT)
    single = explain(predictions[1], model=model)
    assert list(single.explanations) == predictions[1].labels
    assert [w.text for w in single.explanations[model.labels[0]].words][:2] == ["Moscow", "warned"]
    both = explain(predictions[:2], model=model, label=model.labels[2])
    assert [list(r.explanations) for r in both] == [[model.labels[2]]] * 2
    assert not both[0].explanations[model.labels[2]].flagged


def test_explain_refuses_an_unknown_label_or_method(tiny_model):
    with pytest.raises(ExplainError, match=r"\[E035\].*unknown label 'nope'"):
        explain(TEXT, label="nope", model=tiny_model)
    with pytest.raises(ExplainError, match=r"\[E035\].*unknown explanation method 'lime'"):
        explain(TEXT, model=tiny_model, method="lime")


# ---- integrated gradients ----------------------------------------------------------------------------------
def _baseline_score(model: StanceModel, text: str, j: int) -> float:
    """The label's score with every word piece replaced by padding (the first and last tokens are special)."""
    import torch

    ids = model.tokenize([text])[0][0]
    baseline = [ids[0]] + [model.tokenizer.pad_token_id] * (len(ids) - 2) + [ids[-1]]
    with torch.no_grad():
        logits = model.model(input_ids=torch.tensor([baseline]), attention_mask=torch.ones((1, len(ids)),
                                                                                          dtype=torch.long)).logits
    return float(torch.sigmoid(logits[0, j] / model.temperature_vector[j]))


@pytest.mark.parametrize("saved", [False, True], ids=["transformers", "native"])
def test_explain_integrated_gradients_add_up_to_the_score_change(tmp_path, make_tiny_model, architecture, saved):
    """Completeness: the weights sum to the score minus the baseline's, on every architecture and runtime."""
    model = responsive(make_tiny_model(architecture=architecture))
    if saved:
        model = StanceModel.from_pretrained(model.save_pretrained(tmp_path / "m"))
    changes = [model.predict_proba([SENTENCE])[0, j] - _baseline_score(model, SENTENCE, j)
               for j in range(len(model.labels))]
    j = int(np.argmax(np.abs(changes)))
    label = model.labels[j]
    [result] = explain(SENTENCE, label=label, model=model, method="integrated_gradients")
    weights = [w.weight for w in result.explanations[label].words]
    assert abs(changes[j]) > 1e-3
    assert sum(weights) == pytest.approx(changes[j], rel=0.05, abs=2e-5)
    assert len(weights) == len(word_spans(SENTENCE)) and result.method == "integrated_gradients"


# ---- backends ---------------------------------------------------------------------------------------------
def test_explain_fast_backends_explain_with_themselves(tiny_model):
    onnx = pytest.importorskip("onnxruntime") and tiny_model.accelerated("onnx")
    label = tiny_model.labels[0]
    reference = explain(SENTENCE, label=label, model=tiny_model)[0].explanations[label]
    before = onnx.stats.units
    [result] = explain(SENTENCE, label=label, model=onnx)
    assert onnx.stats.units > before, "the onnx model's own forward pass scored the variants"
    assert result.backend == "onnx" and result.note is None
    assert np.allclose([w.weight for w in result.explanations[label].words],
                       [w.weight for w in reference.words], atol=1e-4)

    [gradients] = explain(SENTENCE, label=label, model=onnx, method="integrated_gradients")
    assert gradients.backend == "torch" and "fp32" in gradients.note
    bf16 = tiny_model.accelerated("bf16")
    [result] = explain(SENTENCE, label=label, model=bf16, method="integrated_gradients")
    assert result.backend == "bf16" and result.note is None


# ---- the command line ------------------------------------------------------------------------------------
def test_explain_cli_json_html_and_terminal(tmp_path, tiny_model_dir):
    from rich.console import Console

    from stanceclf.cli.report_verbs import _print_explanations

    label = "threat_framing"
    page = tmp_path / "why.html"
    result = runner.invoke(app, ["explain", TEXT, "--model", str(tiny_model_dir), "--label", label, "--json",
                                 "--html", str(page)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [row["text"] for row in rows] == [p.text for p in StanceModel.from_pretrained(tiny_model_dir).classify(TEXT)]
    words = rows[1]["explanations"][label]["words"]
    assert [w["text"] for w in words][:3] == ["Moscow", "warned", "of"] and all("weight" in w for w in words)
    html = page.read_text(encoding="utf-8")
    assert html.count('class="xp"') == len(rows) and ">Moscow</span>" in html

    document = tmp_path / "doc.txt"
    document.write_text(TEXT, encoding="utf-8")
    plain = runner.invoke(app, ["explain", str(document), "--model", str(tiny_model_dir), "--label", label])
    assert plain.exit_code == 0 and "\x1b[" not in plain.output
    assert plain.output.count("top words:") == len(rows) and "Moscow warned of a dangerous escalation." in plain.output

    terminal = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=200)
    _print_explanations(terminal, explain(TEXT, label=label, model=StanceModel.from_pretrained(tiny_model_dir)))
    shown = terminal.file.getvalue()
    assert "\x1b[" in shown and ";48;2;" in shown, "coloured backgrounds on a terminal"

    wrong = runner.invoke(app, ["explain", TEXT, "--model", str(tiny_model_dir), "--label", "nope"])
    assert wrong.exit_code == 1 and "[E035]" in wrong.output


# ---- the shipped models ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["claim-types-student", "claim-types"])
def test_explain_shipped_models_rank_the_words_that_matter(name):
    """Deleting the three words ranked first lowers a flagged score more than deleting the three ranked last."""
    from stanceclf.infer.predict import load

    model = load(name)
    text = "Analysts warn that Russia will probably launch a new offensive in the spring, which threatens Europe."
    [result] = explain(text, model=model)
    assert result.explanations, result.scores
    for label, explanation in result.explanations.items():
        order = np.argsort([-w.weight for w in explanation.words])
        spans = word_spans(text)
        j = model.labels.index(label)
        top, bottom = (model.predict_proba([without_words(text, spans, picked)])[0, j]
                       for picked in (order[:3], order[-3:]))
        assert top < bottom, (label, explanation.top(3))
