"""The loaded model: a fine-tuned transformer, its tokenizer and manifest, and a backend.

:class:`StanceModel` splits texts into sentences (a :class:`Unit` each, with the context its manifest
reads, see :mod:`stanceclf.data.context`), tokenizes them (a sentence with a context as a pair, by
:class:`PairEncoder`, exactly as training does), runs the forward pass in length-sorted, dynamically
padded batches, calibrates the logits and decides labels through :func:`stanceclf.model.decision.decide`.
The files it is made from are read and written by :mod:`stanceclf.model.directory`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from stanceclf.data.context import contexts_of_rows, sentence_contexts
from stanceclf.data.documents import unicode_problem
from stanceclf.data.language import warn_if_not_english
from stanceclf.errors import BaseModelError, TextInputError
from stanceclf.infer.padding import length_batches, padded_arrays
from stanceclf.infer.results import Prediction
from stanceclf.machine import MemoryRelease
from stanceclf.model.decision import decide, probabilities, reported_scores
from stanceclf.model.directory import (check_head, check_model_directory, deferred_adapter, load_model_directory,
                                      read_tokenizer, save_model_directory)
from stanceclf.model.manifest import ModelManifest

if TYPE_CHECKING:
    import tokenizers
    import transformers

    from stanceclf.data.sentences import SentenceSpan
    from stanceclf.model.adapter import LoraAdapter
    from stanceclf.model.native import NativeClassifier


class Unit(NamedTuple):
    """What :meth:`StanceModel.classify` scores: a sentence (or a whole text), where it is, and what it is read with."""

    #: Which input text it comes from.
    text_index: int
    start: int
    end: int
    text: str
    #: The second segment of its input (:func:`stanceclf.data.context.sentence_contexts`); None: read alone.
    context: str | None = None


def private_tokenizer(tokenizer) -> tokenizers.Tokenizer | None:
    """A copy of the ``tokenizers`` tokenizer inside ``tokenizer`` (a transformers fast tokenizer or a model
    directory's :class:`~stanceclf.model.tokenizer.JsonTokenizer`), without truncation or padding; None when it
    has none. The tokenizer's own keeps truncation state that every call (and concurrent callers) change."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "backend", None)
    if not isinstance(backend, Tokenizer):
        return None
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


class PairEncoder:
    """Token ids of sentences read with a context: the one way they are built, by training
    (:func:`stanceclf.train.phases.make_trainer`) and by prediction (:meth:`StanceModel.tokenize`), from the
    model's ``tokenizer.json`` (a transformers tokenizer and a model directory's run the same file).

    The pair is the tokenizer's own (``[CLS] sentence [SEP] context [SEP]`` for BERT) with
    ``max_length`` tokens at most: the context is cut from its end to what the sentence leaves, and the
    sentence only when it alone is too long (its context is then empty). A tokenizer's ``only_second``
    truncation does the first but fails on the second, for the whole batch. No token type ids: the
    backends' encoders take none, so training passes none either."""

    def __init__(self, tokenizer):
        self.tokenizer = private_tokenizer(tokenizer)
        if self.tokenizer is None:
            raise BaseModelError("reading context needs a fast tokenizer (one with a tokenizer.json); "
                                 f"{type(tokenizer).__name__} has none")
        processor = self.tokenizer.post_processor
        self.special_tokens = processor.num_special_tokens_to_add(True) if processor is not None else 0

    def encodings(self, texts: list[str], contexts: list[str], max_length: int
                  ) -> list[tuple[tokenizers.Encoding, bool]]:
        """Each pair's encoding (ids, offsets, which segment each token is of) and whether its text was cut."""
        room = max_length - self.special_tokens
        encode = self.tokenizer.encode_batch
        pairs = []
        for text, context in zip(encode(list(texts), add_special_tokens=False),
                                 encode(list(contexts), add_special_tokens=False)):
            cut = len(text.ids) > room
            if cut:
                text.truncate(room)
            context.truncate(room - len(text.ids))  # to nothing when the text takes all the room
            pairs.append((self.tokenizer.post_process(text, context, add_special_tokens=True), cut))
        return pairs

    def __call__(self, texts: list[str], contexts: list[str], max_length: int) -> tuple[list[list[int]], list[bool]]:
        """Token ids per pair, and whether its text (not its context) was cut."""
        pairs = self.encodings(texts, contexts, max_length)
        return [encoding.ids for encoding, _ in pairs], [cut for _, cut in pairs]


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
        if model is None and path is None:
            raise ValueError("a StanceModel without its torch model needs the directory to read it from")
        #: None until first needed when the model was loaded onto a backend that runs without torch
        #: (:meth:`from_pretrained` with a cached int8 graph): see :attr:`model`.
        self._model = model.eval() if model is not None else None
        self._model_lock = threading.Lock()
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
        # Without it a process scoring a corpus grows by hundreds of MB (see release_freed_memory).
        self._memory = MemoryRelease()
        # Fast tokenizers mutate their truncation/padding state per call: one caller at a time.
        self._tokenizer_lock = threading.Lock()
        self._pair_encoder: PairEncoder | None = None
        if model is not None:
            self._check_head()

    # ---- properties -------------------------------------------------------------------------
    @property
    def model(self) -> NativeClassifier | transformers.PreTrainedModel:
        """The torch model. A model loaded onto a backend that runs without torch reads it from its directory
        the first time something needs it (another backend, training, integrated gradients)."""
        with self._model_lock:
            if self._model is None:
                model, _, _ = load_model_directory(self.path)
                check_head(model.config, self.manifest, self.path)
                self._model = model.eval()
        return self._model

    @model.setter
    def model(self, model) -> None:
        self._model = model

    @property
    def torch_loaded(self) -> bool:
        """Whether the torch weights are in memory (False for a model running a cached graph that has not
        needed them yet)."""
        return self._model is not None

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
        from stanceclf.infer.backends import BACKENDS, cached_encoder_without_torch, resolve_backend

        backend = resolve_backend(fast)
        if backend != "torch":
            # A backend whose graph this machine has built before runs without loading torch or the weights.
            manifest = check_model_directory(path)
            lazy = cls(None, read_tokenizer(path), manifest, path, adapter=deferred_adapter(path, manifest))
            cached = cached_encoder_without_torch(lazy, backend)
            if cached is not None:
                return lazy.on_encoder(*cached)
            if backend in BACKENDS and BACKENDS[backend].replaces_torch_weights:
                # Built from the directory in a process of its own: the weights are not read here either.
                return lazy.accelerated(backend)
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
        a backend's name, or ``"auto"``/``True`` for the fastest on this machine that passes the accuracy
        gate, measured on first use and cached."""
        from stanceclf.infer.backends import AUTO, build_encoder, choose_backend, resolve_backend

        backend = resolve_backend(backend)
        fp32 = self if self.encoder is None else self.on_encoder(None, "torch")
        if backend == AUTO:
            return choose_backend(fp32, threads=threads)[1]
        return fp32.on_encoder(build_encoder(backend, fp32, threads=threads), backend)

    def on_encoder(self, encoder, backend: str) -> "StanceModel":
        """A copy sharing this model's weights whose forward pass runs ``encoder`` (None: torch)."""
        model = self.model if encoder is None or self._model is not None else None  # still not read: read later
        return StanceModel(model, self.tokenizer, self.manifest, self.path, encoder=encoder, backend=backend,
                           adapter=self._adapter)

    # ---- inference --------------------------------------------------------------------------
    @property
    def pair_encoder(self) -> PairEncoder:
        """What encodes a text read with a context (made on first use)."""
        with self._tokenizer_lock:
            if self._pair_encoder is None:
                self._pair_encoder = PairEncoder(self.tokenizer)
        return self._pair_encoder

    def tokenize(self, texts: list[str], contexts: list[str | None] | None = None
                 ) -> tuple[list[list[int]], list[bool]]:
        """Token ids per text, truncated to ``max_length``, and which texts were truncated. ``contexts`` (one
        per text, None for a text read alone) makes a text with one a pair (:class:`PairEncoder`, as training
        encodes it); its flag then says whether the text itself was cut."""
        paired = [] if contexts is None else [i for i, context in enumerate(contexts) if context is not None]
        if not paired:
            return self._tokenize_alone(texts)
        alone = [i for i, context in enumerate(contexts) if context is None]
        ids: list[list[int]] = [[] for _ in texts]
        truncated = [False] * len(texts)
        encoded = [(paired, self.pair_encoder([texts[i] for i in paired], [contexts[i] for i in paired],
                                              self.max_length))]
        if alone:
            encoded.append((alone, self._tokenize_alone([texts[i] for i in alone])))
        for positions, (rows, cuts) in encoded:
            for position, row, cut in zip(positions, rows, cuts):
                ids[position], truncated[position] = row, cut
        return ids, truncated

    def _tokenize_alone(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
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

    def logits_and_truncation(self, texts: list[str], *, contexts: list[str | None] | None = None,
                              batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """Raw logits ``(len(texts), n_labels)`` and which texts were cut at ``max_length``, computed in
        length-sorted, dynamically padded batches of at most ``batch_size`` texts and ``batch_size`` x
        :data:`~stanceclf.infer.padding.TOKENS_PER_ROW` tokens, padding included. ``contexts``: as in :meth:`tokenize`."""
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32), []
        ids, truncated = self.tokenize(list(texts), contexts)
        logits = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad_id = self.tokenizer.pad_token_id or 0
        padded_tokens = 0
        for batch in length_batches(order, ids, batch_size):
            input_ids, attention = padded_arrays([ids[i] for i in batch], pad_id)
            padded_tokens += input_ids.size
            logits[batch] = self.encoder(input_ids, attention) if self.encoder is not None else \
                self._torch_logits(input_ids, attention)
            # Per batch: the batches of one call grow in length, and each longer one fragments the heap anew.
            self._memory.count(len(batch))
        self.stats.record(ids, truncated, padded_tokens)
        return logits, truncated

    def _torch_logits(self, input_ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        import torch

        model = self.model
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(input_ids).to(model.device),
                         attention_mask=torch.from_numpy(attention).to(model.device)).logits.float().cpu().numpy()

    def proba_and_truncation(self, texts: list[str], *, contexts: list[str | None] | None = None,
                             batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """:meth:`predict_proba` and which texts were cut at ``max_length``; ``contexts`` as in :meth:`tokenize`."""
        logits, truncated = self.logits_and_truncation(texts, contexts=contexts, batch_size=batch_size)
        return probabilities(logits, self.temperature_vector), truncated

    def predict_logits(self, texts: list[str], *, contexts: list[str | None] | None = None,
                       batch_size: int = 64) -> np.ndarray:
        """Raw logits, ``(len(texts), len(labels))`` float32; each text is one unit (no sentence splitting),
        read alone unless ``contexts`` gives it one (as in :meth:`tokenize`; e.g. :meth:`example_contexts`)."""
        return self.logits_and_truncation(texts, contexts=contexts, batch_size=batch_size)[0]

    def predict_proba(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities, ``(len(texts), len(labels))`` float32 (sigmoid of temperature-scaled
        logits); each text is one unit (no sentence splitting), independent of the others: a model that
        reads context (``manifest.context``) reads none here. :meth:`classify` a document to give its
        sentences theirs."""
        return self.proba_and_truncation(texts, batch_size=batch_size)[0]

    def predict(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Label decisions, ``(len(texts), len(labels))`` of 0 and 1 (int8), column ``j`` for ``labels[j]``:
        what :meth:`classify` reports, through the same decision rule; each text is one unit, read without
        context (see :meth:`predict_proba`)."""
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
        each input text; without it, each text is one unit. A model that reads
        context (``manifest.context``) reads each sentence with the sentences
        around it and the title of its own text, as it was trained; without
        ``split_sentences`` a text is read alone, without context.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)  # a generator would be used up by the checks below
        results = self.classify_units(self.units(texts, split_sentences=split_sentences), len(texts),
                                      batch_size=batch_size)
        return results[0] if single else results

    def units(self, texts: list[str], *, split_sentences: bool = True) -> list[Unit]:
        """What :meth:`classify` scores: a :class:`Unit` per sentence, with its context (or per non-blank
        text without ``split_sentences``, read alone), after checking that every text is a valid string."""
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"input {position} is {type(text).__name__}, expected str")
            problem = unicode_problem(text)
            if problem:
                raise TextInputError(f"input {position} is {problem}")
        units: list[Unit] = []
        for text_index, text in enumerate(texts):
            warn_if_not_english(text, f"input {text_index}")
            if split_sentences:
                units.extend(self.document_units(text_index, self.split(text)))
            elif text.strip():
                units.append(Unit(text_index, 0, len(text), text))
        return units

    def document_units(self, text_index: int, sentences: list[SentenceSpan]) -> list[Unit]:
        """The units of one text's sentences (all of them, in order, as :meth:`split` gives them), each with
        the context this model reads it with: what :meth:`units` makes of a text, for callers that split it."""
        contexts = sentence_contexts([sentence.text for sentence in sentences], self.manifest.context)
        return [Unit(text_index, sentence.start, sentence.end, sentence.text, context)
                for sentence, context in zip(sentences, contexts)]

    def example_contexts(self, examples) -> list[str | None] | None:
        """The contexts this model reads for the rows of a built dataset (its ``doc_id``, ``sentence_index``
        and ``text`` columns, documents whole), rebuilt with its own settings; None when it reads none."""
        settings = self.manifest.context
        if not settings.enabled:
            return None
        return contexts_of_rows(examples["doc_id"], examples["sentence_index"], examples["text"], settings)

    def classify_units(self, units: list[Unit], n_texts: int, *, batch_size: int = 64) -> list[list[Prediction]]:
        """Score :meth:`units` of ``n_texts`` texts in one length-sorted pass: one list of predictions per text.
        Units of several callers can be scored together by numbering their texts consecutively."""
        probs, truncated = self.score_units(units, batch_size=batch_size)
        results: list[list[Prediction]] = [[] for _ in range(n_texts)]
        for unit, prediction in zip(units, self.unit_predictions(units, probs, truncated)):
            results[unit.text_index].append(prediction)
        return results

    def score_units(self, units: list[Unit], *, batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """Calibrated probabilities of ``units`` (each read with its context) and which were cut, in one
        length-sorted pass: how every caller scores sentences (classify, score, serve, explain)."""
        return self.proba_and_truncation([unit.text for unit in units], contexts=[unit.context for unit in units],
                                         batch_size=batch_size)

    def unit_predictions(self, units: list[Unit], probs: np.ndarray, truncated: list[bool]) -> list[Prediction]:
        """:meth:`predictions` of scored ``units``."""
        return self.predictions([(unit.start, unit.end, unit.text) for unit in units], probs, truncated)

    def predictions(self, spans, probs: np.ndarray, truncated: list[bool]) -> list[Prediction]:
        """:class:`Prediction` objects for ``(start, end, text)`` units and their calibrated probabilities."""
        scores = reported_scores(probs)
        chosen = decide(probs, self.threshold_vector)
        labels = self.labels
        return [Prediction(text=text, start=start, end=end, labels=[l for l, on in zip(labels, hits) if on],
                           scores=dict(zip(labels, map(float, row))), truncated=cut)
                for (start, end, text), row, hits, cut in zip(spans, scores, chosen, truncated)]
