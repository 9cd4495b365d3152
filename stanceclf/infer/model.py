"""The loaded model: a fine-tuned transformer, its tokenizer and manifest, and a backend.

:class:`StanceModel` splits texts into sentences, tokenizes them, runs the forward pass in
length-sorted, dynamically padded batches, calibrates the logits and decides labels through
:func:`stanceclf.model.decision.decide`. The files it is made from are read and written by
:mod:`stanceclf.model.directory`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stanceclf.data.documents import unicode_problem
from stanceclf.data.language import warn_if_not_english
from stanceclf.errors import TextInputError
from stanceclf.infer.results import Prediction
from stanceclf.model.decision import decide, probabilities, reported_scores
from stanceclf.model.directory import check_head, deferred_adapter, load_model_directory, save_model_directory
from stanceclf.model.manifest import ModelManifest

if TYPE_CHECKING:
    from stanceclf.data.sentences import SentenceSpan
    from stanceclf.model.adapter import LoraAdapter


#: Tokens per text of ``batch_size`` that one forward pass may hold, padding included: a batch of short
#: sentences stays whole, while one long sentence no longer pads a whole batch to its length (on a seed
#: article of 38 sentences, padded tokens fall from 4,864 to 2,644 for 1,493 real ones).
TOKENS_PER_ROW = 32


def _length_batches(order: list[int], ids: list[list[int]], batch_size: int):
    """Consecutive runs of ``order`` (indices sorted by length) that respect both batch limits."""
    budget = batch_size * TOKENS_PER_ROW
    batch: list[int] = []
    for index in order:
        if batch and (len(batch) == batch_size or (len(batch) + 1) * len(ids[index]) > budget):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


class InferenceStats:
    """Counts since load, for benchmarks: units (sentences or whole inputs) scored and cut at
    ``max_length``, real tokens, and tokens including the padding of length-sorted batches.
    Safe to update from several threads."""

    def __init__(self):
        self.units = self.truncated = self.tokens = self.padded_tokens = 0
        self._lock = threading.Lock()

    def record(self, ids: list[list[int]], truncated: list[bool], padded_tokens: int) -> None:
        with self._lock:
            self.units += len(ids)
            self.truncated += sum(truncated)
            self.tokens += sum(len(row) for row in ids)
            self.padded_tokens += padded_tokens


class StanceModel:
    """A loaded model: ``classify`` texts, read its ``labels`` and ``thresholds``."""

    def __init__(self, model, tokenizer, manifest: ModelManifest, path: str | Path | None = None, *,
                 encoder=None, backend: str = "torch", adapter=None):
        self.model = model.eval()
        # The LoRA adapter ``model`` was merged from, or a callable that reads it (see :attr:`adapter`).
        self._adapter = adapter
        #: Runs the forward pass instead of ``model`` when set (a fast path, see :mod:`stanceclf.infer.backends`).
        self.encoder = encoder
        #: Which forward pass runs: "torch" (fp32), "bf16" or "onnx".
        self.backend = backend
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.path = Path(path) if path is not None else None
        self.stats = InferenceStats()
        # Fast tokenizers mutate their truncation/padding state per call: one caller at a time.
        self._tokenizer_lock = threading.Lock()
        self._check_head()

    # ---- properties -------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.manifest.thresholds)

    @property
    def max_length(self) -> int:
        return self.manifest.max_length

    @property
    def adapter(self) -> LoraAdapter | None:
        """The LoRA adapter ``model`` was merged from (:mod:`stanceclf.model.adapter`), if it is to be saved
        as one: a model read from an adapter directory, or trained with ``training.lora_storage = "adapter"``.
        Read on first use: reading it imports peft, which prediction never needs."""
        if callable(self._adapter):
            self._adapter = self._adapter()
        return self._adapter

    @adapter.setter
    def adapter(self, adapter) -> None:
        self._adapter = adapter

    def __repr__(self) -> str:
        backend = "" if self.backend == "torch" else f", backend={self.backend!r}"
        return f"StanceModel(path={str(self.path)!r}, labels={self.labels}{backend})"

    def _check_head(self) -> None:
        check_head(self.model.config, self.manifest, self.path)

    # ---- loading and saving -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, fast: bool | str = False) -> "StanceModel":
        """Load a model directory. ``fast`` picks a faster CPU path: ``True`` (the fastest on this
        machine, measured once and cached) or a backend's name; see :mod:`stanceclf.infer.backends`."""
        model, tokenizer, manifest = load_model_directory(path)
        loaded = cls(model, tokenizer, manifest, path, adapter=deferred_adapter(path, manifest))
        return loaded.accelerated(fast) if fast else loaded

    def save_pretrained(self, path: str | Path, *, storage_dtype: str = "float32", model_card: bool = True) -> Path:
        self.path = save_model_directory(self.model, self.tokenizer, self.manifest, path,
                                         storage_dtype=storage_dtype, model_card=model_card, adapter=self.adapter)
        # What was written (an adapter's pinned base among it): caches keyed on the manifest then see
        # this model as they will see it reloaded.
        self.manifest = ModelManifest.read(self.path)
        return self.path

    def accelerated(self, backend: bool | str = "auto", *, threads: int | None = None) -> "StanceModel":
        """A copy that runs another backend, sharing this one's weights (see :mod:`stanceclf.infer.backends`):
        a backend's name, or ``"auto"``/``True`` for the fastest on this machine, measured on first use and
        cached. Each fast path keeps every score within 0.02 of fp32 (tested)."""
        from stanceclf.infer.backends import AUTO, build_encoder, choose_backend, resolve_backend

        backend = resolve_backend(backend)
        fp32 = self if self.encoder is None else StanceModel(self.model, self.tokenizer, self.manifest, self.path,
                                                             adapter=self._adapter)
        if backend == AUTO:
            return choose_backend(fp32, threads=threads)[1]
        encoder = build_encoder(backend, self.model, threads=threads)
        return StanceModel(self.model, self.tokenizer, self.manifest, self.path, encoder=encoder, backend=backend,
                           adapter=self._adapter)

    # ---- inference --------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids per text, truncated to ``max_length``, and which texts were truncated."""
        limit = self.max_length
        with self._tokenizer_lock:
            # One token more than allowed tells whether a text was cut.
            encoded = self.tokenizer(texts, truncation=True, max_length=limit + 1, add_special_tokens=True,
                                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        ids, truncated = [], []
        for row in encoded:
            if len(row) > limit:
                row = row[: limit - 1] + row[-1:]
                truncated.append(True)
            else:
                truncated.append(False)
            ids.append(row)
        return ids, truncated

    def logits_and_truncation(self, texts: list[str], *, batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """Raw logits ``(len(texts), n_labels)`` and which texts were cut at ``max_length``, computed in
        length-sorted, dynamically padded batches of at most ``batch_size`` texts and ``batch_size`` x
        :data:`TOKENS_PER_ROW` tokens, padding included."""
        import torch

        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32), []
        ids, truncated = self.tokenize(list(texts))
        logits = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad_id = self.tokenizer.pad_token_id or 0
        padded_tokens = 0
        with torch.inference_mode():
            for batch in _length_batches(order, ids, batch_size):
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    attention[row, : len(ids[i])] = 1
                padded_tokens += input_ids.numel()
                if self.encoder is not None:
                    logits[batch] = self.encoder(input_ids.numpy(), attention.numpy())
                else:
                    device = self.model.device
                    logits[batch] = self.model(input_ids=input_ids.to(device),
                                               attention_mask=attention.to(device)).logits.float().cpu().numpy()
        self.stats.record(ids, truncated, padded_tokens)
        return logits, truncated

    def proba_and_truncation(self, texts: list[str], *, batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """:meth:`predict_proba` and which texts were cut at ``max_length``."""
        logits, truncated = self.logits_and_truncation(texts, batch_size=batch_size)
        return probabilities(logits, self.temperature_vector), truncated

    def predict_logits(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Raw logits, ``(len(texts), len(labels))`` float32; each text is one unit (no sentence splitting)."""
        return self.logits_and_truncation(texts, batch_size=batch_size)[0]

    def predict_proba(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities, ``(len(texts), len(labels))`` float32 (sigmoid of temperature-scaled
        logits); each text is one unit (no sentence splitting)."""
        return self.proba_and_truncation(texts, batch_size=batch_size)[0]

    def predict(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Label decisions, ``(len(texts), len(labels))`` of 0 and 1 (int8), column ``j`` for ``labels[j]``:
        what :meth:`classify` reports, through the same decision rule; each text is one unit."""
        return decide(self.predict_proba(texts, batch_size=batch_size), self.threshold_vector).astype(np.int8)

    def __call__(self, texts, **options):
        """:meth:`classify`."""
        return self.classify(texts, **options)

    @property
    def temperature_vector(self) -> np.ndarray:
        return np.array([self.manifest.temperatures[label] for label in self.labels], dtype=np.float32)

    @property
    def threshold_vector(self) -> np.ndarray:
        return np.array([self.manifest.thresholds[label] for label in self.labels], dtype=np.float64)

    def split(self, text: str) -> list[SentenceSpan]:
        return self.manifest.splitter.split(text)

    def classify(self, texts, *, split_sentences: bool = True, batch_size: int = 64
                 ) -> list[Prediction] | list[list[Prediction]]:
        """Classify one text (-> list of :class:`Prediction`) or a list of texts (-> one list per text).

        With ``split_sentences`` each text is split into sentences, all
        sentences of all texts are batched together, and offsets point into
        each input text; without it, each text is one unit.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)  # a generator would be used up by the checks below
        results = self.classify_units(self.units(texts, split_sentences=split_sentences), len(texts),
                                      batch_size=batch_size)
        return results[0] if single else results

    def units(self, texts: list[str], *, split_sentences: bool = True) -> list[tuple[int, int, int, str]]:
        """What :meth:`classify` scores: ``(text index, start, end, unit text)`` per sentence (or per
        non-blank text without ``split_sentences``), after checking that every text is a valid string."""
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"input {position} is {type(text).__name__}, expected str")
            problem = unicode_problem(text)
            if problem:
                raise TextInputError(f"input {position} is {problem}")
        units: list[tuple[int, int, int, str]] = []
        for doc_index, text in enumerate(texts):
            warn_if_not_english(text, f"input {doc_index}")
            if split_sentences:
                units.extend((doc_index, s.start, s.end, s.text) for s in self.split(text))
            elif text.strip():
                units.append((doc_index, 0, len(text), text))
        return units

    def classify_units(self, units: list[tuple[int, int, int, str]], n_texts: int, *,
                       batch_size: int = 64) -> list[list[Prediction]]:
        """Score :meth:`units` of ``n_texts`` texts in one length-sorted pass: one list of predictions per text.
        Units of several callers can be scored together by numbering their texts consecutively."""
        probs, truncated = self.proba_and_truncation([u[3] for u in units], batch_size=batch_size)
        results: list[list[Prediction]] = [[] for _ in range(n_texts)]
        spans = [(start, end, text) for _, start, end, text in units]
        for (doc_index, *_), prediction in zip(units, self.predictions(spans, probs, truncated)):
            results[doc_index].append(prediction)
        return results

    def predictions(self, spans, probs: np.ndarray, truncated: list[bool]) -> list[Prediction]:
        """:class:`Prediction` objects for ``(start, end, text)`` units and their calibrated probabilities."""
        scores = reported_scores(probs)
        chosen = decide(probs, self.threshold_vector)
        labels = self.labels
        return [Prediction(text=text, start=start, end=end, labels=[l for l, on in zip(labels, hits) if on],
                           scores=dict(zip(labels, map(float, row))), truncated=cut)
                for (start, end, text), row, hits, cut in zip(spans, scores, chosen, truncated)]
