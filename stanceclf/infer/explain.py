"""Why a sentence got a label: a weight per word saying how much it pushed the label's calibrated score.

:func:`explain` takes a text (split into sentences as :meth:`~stanceclf.infer.model.StanceModel.classify`
splits it), a :class:`~stanceclf.infer.results.Prediction` or a list of them, and explains each flagged
label of each sentence (or the label named). Words are runs of letters and digits (with inner hyphens
and apostrophes: "war-torn", "Russia's") or single punctuation marks, never word pieces.

Two methods, both on the calibrated probability (the score every output reports):

- ``"occlusion"`` (the default): a word's weight is the label's score of the sentence minus its score
  with that word deleted. The variants are scored by :meth:`StanceModel.proba_and_truncation`, the
  forward pass the model serves: a bf16 or ONNX model explains with itself. One forward unit per word.
- ``"integrated_gradients"``: integrated gradients of the score along a straight path from a baseline
  whose words are padding tokens (special tokens kept) to the sentence, in the embedding layer's output,
  Gauss-Legendre quadrature with ``steps`` points; a word's weight is the sum over its word pieces. It
  needs gradients: the torch model computes it (under bfloat16 autocast for the bf16 backend); an ONNX
  model has none, so it falls back to the fp32 torch model and says so in :attr:`Explanation.note`.

Occlusion is the default, by measurement (benchmarks/results/explain-faithfulness.md, made by
benchmarks/explain_faithfulness.py): on the flagged sentences of the claim-types test split, deleting the words
either method ranks first lowers the score about three times as much as deleting random words, on every label
(area over the deletion curve, student: 0.80, 0.66 and 0.48 for occlusion against 0.22, 0.18 and 0.15 for
random); the two methods are level within their intervals, occlusion ahead on the first one to three words,
which a highlight shows. Occlusion costs 2.4 times less per sentence and runs on every backend.

Nothing here changes a score: explanations only read the model.
"""

from __future__ import annotations

import html
import re
import threading
import weakref
from dataclasses import asdict, dataclass, field

import numpy as np

from stanceclf.errors import ExplainError
from stanceclf.infer.model import StanceModel, Unit, private_tokenizer
from stanceclf.infer.results import Prediction
from stanceclf.model.decision import decide, reported_scores

#: A word: letters and digits with inner hyphens or apostrophes, or one punctuation mark.
WORD_PATTERN = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
METHODS = ("occlusion", "integrated_gradients")
DEFAULT_METHOD = "occlusion"
#: Quadrature points of integrated gradients: the path to a calibrated score is steep (the sigmoid saturates);
#: on a news sentence the weights of the student summed to 0.10 (16 points), 0.51 (32), 0.95 (64) and 0.97
#: (128) against a score change of 0.96.
DEFAULT_STEPS = 64
#: Tokens (steps x sentence length) of one integrated-gradients pass, so that memory stays bounded.
GRADIENT_TOKENS_PER_PASS = 2048
#: Decimal places of a reported word weight.
WEIGHT_DECIMALS = 6


@dataclass
class WordWeight:
    """One word of a sentence and how much it pushed a label's calibrated score (positive: up)."""

    text: str
    #: Offsets into the input text, like :class:`Prediction`'s.
    start: int
    end: int
    weight: float


@dataclass
class LabelExplanation:
    """The words of one sentence weighed for one label."""

    label: str
    score: float
    threshold: float
    flagged: bool
    words: list[WordWeight]

    def top(self, k: int = 5) -> list[WordWeight]:
        """The ``k`` words that pushed the score up the most."""
        return sorted((w for w in self.words if w.weight > 0), key=lambda w: -w.weight)[:k]


@dataclass
class Explanation:
    """One sentence: its labels and scores, and a :class:`LabelExplanation` per explained label."""

    text: str
    start: int
    end: int
    labels: list[str]
    scores: dict[str, float]
    explanations: dict[str, LabelExplanation] = field(default_factory=dict)
    method: str = DEFAULT_METHOD
    #: The forward pass that computed the weights: "torch" (fp32), "bf16" or "onnx".
    backend: str = "torch"
    #: Set when the weights were not computed on the backend the model serves (and why).
    note: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def word_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every word of ``text`` (see :data:`WORD_PATTERN`)."""
    return [match.span() for match in WORD_PATTERN.finditer(text)]


def without_words(text: str, spans: list[tuple[int, int]], removed) -> str:
    """``text`` with the words ``removed`` (indices into ``spans``) deleted. Whitespace around a deleted word
    becomes one space; a word glued to its neighbours leaves none, so the words left tokenize as before."""
    pieces, cursor = [], 0
    for index in sorted(set(removed)):
        start, end = spans[index]
        pieces.append(text[cursor:start])
        cursor = end
    pieces.append(text[cursor:])
    kept = pieces[0]
    for piece in pieces[1:]:
        kept = kept.rstrip() + " " + piece.lstrip() if kept[-1:].isspace() or piece[:1].isspace() else kept + piece
    return kept.strip()


@dataclass
class _Unit:
    """A sentence to explain and the labels (indices) to explain it for."""

    text: str
    start: int
    labels: list[int]
    #: What the model reads beside it (see :class:`~stanceclf.infer.model.Unit`); kept fixed while its words vary.
    context: str | None = None
    spans: list[tuple[int, int]] = field(init=False)

    def __post_init__(self):
        self.spans = word_spans(self.text)


def explain(text_or_prediction, label: str | None = None, model: StanceModel | str | None = None, *,
            method: str = DEFAULT_METHOD, split_sentences: bool = True, steps: int = DEFAULT_STEPS,
            batch_size: int = 64) -> Explanation | list[Explanation]:
    """Explain the flagged labels of each sentence (or ``label`` on every sentence, flagged or not).

    ``text_or_prediction``: a text (-> one :class:`Explanation` per sentence; sentences without a label to
    explain have no :attr:`~Explanation.explanations`), a :class:`Prediction` (-> one :class:`Explanation`;
    its ``labels`` are the ones explained) or a list of predictions (-> a list). ``model``: a loaded model,
    a model directory or a shipped model's name (default: the shipped default). Scores are recomputed by
    ``model``; the weights of a label add up roughly (occlusion) or nearly exactly (integrated gradients)
    to how far the sentence's score is from a sentence without those words. A text's sentences are read
    as :meth:`~StanceModel.classify` reads them, with their context when the model reads one (the words of
    the sentence are weighed, its context stays as it is); a prediction carries no context, so a model that
    reads one explains it without, and says so in :attr:`Explanation.note`.
    """
    from stanceclf.infer.predict import load

    if not isinstance(model, StanceModel):
        model = load(model)
    if method not in METHODS:
        raise ExplainError(f"unknown explanation method {method!r}: choose from {', '.join(METHODS)}")
    if label is not None and label not in model.labels:
        raise ExplainError(f"unknown label {label!r}: this model's labels are {', '.join(model.labels)}")
    context_lost = None
    if isinstance(text_or_prediction, str):
        predictions = None
        scored = model.units([text_or_prediction], split_sentences=split_sentences)
    else:
        predictions = ([text_or_prediction] if isinstance(text_or_prediction, Prediction)
                       else list(text_or_prediction))
        for position, prediction in enumerate(predictions):
            if not isinstance(prediction, Prediction):
                raise TypeError(f"item {position} is {type(prediction).__name__}, expected Prediction")
        scored = [Unit(0, p.start, p.end, p.text) for p in predictions]
        if model.manifest.context.enabled:
            context_lost = ("explained without context: this model reads each sentence with its neighbours and "
                            "title, which a prediction does not carry (explain the text for classify's scores)")
    probs, _ = model.score_units(scored, batch_size=batch_size)
    chosen = decide(probs, model.threshold_vector)
    units = []
    for i, (_, start, _, text, context) in enumerate(scored):
        if label is not None:
            wanted = [model.labels.index(label)]
        elif predictions is not None:  # a prediction's own labels, as it reported them
            wanted = [model.labels.index(name) for name in predictions[i].labels if name in model.labels]
        else:
            wanted = [int(j) for j in np.flatnonzero(chosen[i])]
        units.append(_Unit(text, start, wanted, context))
    results = [_explanation(model, unit, row, hits) for unit, row, hits in zip(units, probs, chosen)]
    to_explain = [(unit, result) for unit, result in zip(units, results) if unit.labels and unit.spans]
    backend, note = model.backend, None
    if to_explain:
        weigh = _occlusion if method == "occlusion" else _integrated_gradients
        backend, note = weigh(model, [unit for unit, _ in to_explain], [result for _, result in to_explain],
                              batch_size=batch_size, steps=steps)
    note = "; ".join(filter(None, [context_lost, note])) or None
    for result in results:
        result.method, result.backend, result.note = method, backend, note
    if predictions is None or not isinstance(text_or_prediction, Prediction):
        return results
    return results[0]


def _explanation(model: StanceModel, unit: _Unit, probs: np.ndarray, hits: np.ndarray) -> Explanation:
    scores = reported_scores(probs)
    return Explanation(text=unit.text, start=unit.start, end=unit.start + len(unit.text),
                       labels=[name for name, on in zip(model.labels, hits) if on],
                       scores={name: float(s) for name, s in zip(model.labels, scores)})


def _attach(model: StanceModel, unit: _Unit, result: Explanation, label_index: int, weights) -> None:
    """Store the word weights of one label on ``result``."""
    name = model.labels[label_index]
    words = [WordWeight(unit.text[start:end], unit.start + start, unit.start + end,
                        round(float(weight), WEIGHT_DECIMALS))
             for (start, end), weight in zip(unit.spans, weights)]
    result.explanations[name] = LabelExplanation(name, result.scores[name], model.thresholds[name],
                                                 name in result.labels, words)


# ---- occlusion --------------------------------------------------------------------------------------
def occlusion_weights(model: StanceModel, texts: list[str], *, contexts: list[str | None] | None = None,
                      batch_size: int = 64) -> list[np.ndarray]:
    """For each text, ``(n_words, n_labels)``: every label's calibrated score of the text minus its score with
    that word deleted, all variants scored in one length-sorted pass of the served forward pass, each read
    with its text's context (``contexts``, as in :meth:`StanceModel.tokenize`)."""
    spans = [word_spans(text) for text in texts]
    variants: list[str] = []
    variant_contexts: list[str | None] = []
    for text, context, words in zip(texts, contexts or [None] * len(texts), spans):
        variants.append(text)
        variants.extend(without_words(text, words, [i]) for i in range(len(words)))
        variant_contexts.extend([context] * (1 + len(words)))
    probs, _ = model.proba_and_truncation(variants, contexts=variant_contexts, batch_size=batch_size)
    probs = probs.astype(np.float64)
    weights, offset = [], 0
    for words in spans:
        weights.append(probs[offset] - probs[offset + 1: offset + 1 + len(words)])
        offset += 1 + len(words)
    return weights


def _occlusion(model, units, results, *, batch_size, steps) -> tuple[str, str | None]:
    weighed = occlusion_weights(model, [u.text for u in units], contexts=[u.context for u in units],
                                batch_size=batch_size)
    for unit, result, weights in zip(units, results, weighed):
        for j in unit.labels:
            _attach(model, unit, result, j, weights[:, j])
    return model.backend, None


# ---- integrated gradients ---------------------------------------------------------------------------
def _integrated_gradients(model, units, results, *, batch_size, steps) -> tuple[str, str | None]:
    backend, note = model.backend, None
    if model.backend not in ("torch", "bf16"):
        backend = "torch"
        note = (f"integrated gradients need gradients, which the {model.backend} backend does not compute: "
                "the weights come from the fp32 torch model")
    for unit, result in zip(units, results):
        weights = integrated_gradient_weights(model, unit.text, unit.labels, context=unit.context, steps=steps,
                                              bfloat16=backend == "bf16")
        for j in unit.labels:
            _attach(model, unit, result, j, weights[j])
    return backend, note


def integrated_gradient_weights(model: StanceModel, text: str, labels: list[int], *, context: str | None = None,
                                steps: int = DEFAULT_STEPS, bfloat16: bool = False) -> dict[int, np.ndarray]:
    """Per label index, the integrated gradients of its calibrated score summed per word of ``text`` (read with
    ``context``, which stays as it is), with padding tokens in place of every word piece as the baseline."""
    import torch

    network = model.model
    layer = _embedding_layer(network)
    ids, baseline, owners = padding_baseline(model, text, context)
    n_words = len(word_spans(text))
    input_ids, baseline_ids = torch.tensor([ids]), torch.tensor([baseline])
    nodes, node_weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1) / 2, dtype=torch.float32)
    node_weights = torch.tensor(node_weights / 2, dtype=torch.float32)
    temperatures = torch.tensor(model.temperature_vector)
    per_pass = max(1, GRADIENT_TOKENS_PER_PASS // len(ids))
    with torch.no_grad():
        inputs, baseline = layer(input_ids).float(), layer(baseline_ids).float()
    difference = inputs - baseline
    token_weights = {j: torch.zeros(len(ids)) for j in labels}
    replaced: dict[str, torch.Tensor] = {}
    hook = layer.register_forward_hook(lambda module, args, output: replaced["path"])
    try:
        for first in range(0, steps, per_pass):
            chosen = slice(first, first + per_pass)
            path = (baseline + alphas[chosen, None, None] * difference).requires_grad_(True)
            replaced["path"] = path
            with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                logits = network(input_ids=input_ids.expand(len(path), -1),
                                 attention_mask=torch.ones((len(path), len(ids)), dtype=torch.long)).logits
                scores = torch.sigmoid(logits.float() / temperatures)
            for position, j in enumerate(labels):
                gradient, = torch.autograd.grad(scores[:, j].sum(), path,
                                                retain_graph=position < len(labels) - 1)
                weighted = (gradient.float() * node_weights[chosen, None, None]).sum(0)
                token_weights[j] += (weighted * difference[0]).sum(-1)
    finally:
        hook.remove()
        replaced.clear()
    result = {}
    for j in labels:
        per_word = np.zeros(n_words)
        for owner, weight in zip(owners, token_weights[j].numpy()):
            if owner is not None:
                per_word[owner] += weight
        result[j] = per_word
    return result


def padding_baseline(model: StanceModel, text: str, context: str | None = None
                     ) -> tuple[list[int], list[int], list[int | None]]:
    """``(ids, baseline ids, word of each token)``: the token ids the model scores for ``text`` (read with
    ``context``), the same with a padding token for every word piece of ``text`` (special tokens and the
    context kept), and the word (index into :func:`word_spans`) each token belongs to (None for special
    tokens and the context's)."""
    ids = model.tokenize([text], None if context is None else [context])[0][0]
    owners = _token_words(model, text, ids, context)
    pad = model.tokenizer.pad_token_id
    return ids, [pad if owner is not None else token for token, owner in zip(ids, owners)], owners


def _embedding_layer(network):
    """The module whose output is the input embeddings (word, position and type embeddings, normalised)."""
    base = getattr(network, "base_model", None)
    if base is None or base is network:
        base = getattr(network, network.config.model_type, None)
    layer = getattr(base, "embeddings", None)
    if layer is None:
        raise ExplainError(f"integrated gradients cannot find the embedding layer of this "
                           f"{network.config.model_type} model: use method='occlusion'")
    return layer


_private_tokenizers: weakref.WeakKeyDictionary[StanceModel, object] = weakref.WeakKeyDictionary()
_private_lock = threading.Lock()


def _token_words(model: StanceModel, text: str, ids: list[int], context: str | None = None) -> list[int | None]:
    """The word (index into :func:`word_spans`) each of the served token ``ids`` of ``text`` (read with
    ``context``) belongs to, None for special tokens and the context's. Offsets come from a private copy of
    the model's ``tokenizers`` tokenizer (the model's own keeps truncation state that concurrent callers
    change), or for a pair from the model's own :class:`~stanceclf.infer.model.PairEncoder`."""
    if context is not None:
        encoding, _ = model.pair_encoder.encodings([text], [context], model.max_length)[0]
        if list(encoding.ids) != list(ids):
            raise ExplainError("the tokenizer's offsets do not match the ids the model scores: use method='occlusion'")
        sources = range(len(ids))
    else:
        with _private_lock:
            tokenizer = _private_tokenizers.get(model)
            if tokenizer is None:
                tokenizer = _private_tokenizers[model] = _copy_tokenizer(model.tokenizer)
            encoding = tokenizer.encode(text, add_special_tokens=True)
        # The served ids are the encoding cut at max_length, its last (special) token kept.
        if list(encoding.ids[: len(ids) - 1]) != list(ids[:-1]):
            raise ExplainError("the tokenizer's offsets do not match the ids the model scores: use method='occlusion'")
        sources = [position if position < len(ids) - 1 else len(encoding.ids) - 1 for position in range(len(ids))]
    spans = word_spans(text)
    starts = [start for start, _ in spans]
    owners: list[int | None] = []
    for source in sources:
        if encoding.special_tokens_mask[source] or encoding.sequence_ids[source] != 0:  # not a token of the text
            owners.append(None)
            continue
        start = encoding.offsets[source][0]
        word = int(np.searchsorted(starts, start, side="right")) - 1
        owners.append(word if word >= 0 and start < spans[word][1] else None)
    return owners


def _copy_tokenizer(tokenizer):
    copy = private_tokenizer(tokenizer)
    if copy is None:
        raise ExplainError("integrated gradients need a fast (tokenizers) tokenizer for word offsets: "
                           "use method='occlusion'")
    return copy


# ---- showing explanations -----------------------------------------------------------------------------
#: The style sheet of highlighted sentences (the report embeds it too).
HIGHLIGHT_CSS = """
.xp { line-height: 1.9; }
.xp .w { border-radius: 2px; }
.xp .legend { font-size: 85%; color: #555; }
"""


def word_tint(weight: float, scale: float) -> tuple[int, int, int, float]:
    """``(red, green, blue, opacity)`` for a word: red for a push up, blue for a push down, more opaque for a
    larger weight (relative to ``scale``, the largest weight of its sentence)."""
    strength = 0.0 if scale <= 0 else min(1.0, abs(weight) / scale)
    red, green, blue = (220, 50, 47) if weight > 0 else (38, 110, 210)
    return red, green, blue, 0.75 * strength


def word_colour(weight: float, scale: float) -> str:
    """:func:`word_tint` as a CSS colour."""
    red, green, blue, opacity = word_tint(weight, scale)
    return f"rgba({red},{green},{blue},{opacity:.2f})"


def highlighted_html(explanation: LabelExplanation, text: str, offset: int) -> str:
    """``text`` (a sentence starting at ``offset`` in its input) as HTML, each word on a background that
    shows its weight; the weight is in the word's tooltip."""
    scale = max((abs(w.weight) for w in explanation.words), default=0.0)
    parts, cursor = [], 0
    for word in explanation.words:
        start, end = word.start - offset, word.end - offset
        parts.append(html.escape(text[cursor:start]))
        parts.append(f'<span class="w" style="background:{word_colour(word.weight, scale)}" '
                     f'title="{word.weight:+.4f}">{html.escape(text[start:end])}</span>')
        cursor = end
    parts.append(html.escape(text[cursor:]))
    return f'<span class="xp">{"".join(parts)}</span>'


def explanations_page(explanations: list[Explanation], title: str = "stanceclf explain") -> str:
    """A self-contained HTML page of explanations: each sentence once per explained label."""
    blocks = []
    for item in explanations:
        for name, label in item.explanations.items():
            verdict = "flagged" if label.flagged else "not flagged"
            blocks.append(f'<div class="item"><div class="head">{html.escape(name)}: score {label.score:.3f} '
                          f'(threshold {label.threshold:.3f}, {verdict}); characters {item.start}-{item.end}'
                          f'</div>{highlighted_html(label, item.text, item.start)}</div>')
    method = explanations[0].method if explanations else DEFAULT_METHOD
    body = "\n".join(blocks) or "<p>No sentence has a label to explain.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; }}
.item {{ margin: 1em 0; }} .head {{ font-size: 85%; color: #444; }}{HIGHLIGHT_CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
<p class="legend">Method: {html.escape(method)}. Red words pushed the label's calibrated score up, blue ones
down; the stronger the colour, the larger the push (hover a word for its weight).</p>
{body}
</body></html>
"""
