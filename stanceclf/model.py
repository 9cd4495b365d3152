"""The model wrapper: a fine-tuned transformer plus its ``stanceclf.json`` manifest.

A model directory is a plain ``save_pretrained`` folder (safetensors weights,
tokenizer files, ``config.json`` with ``id2label``/``label2id`` and
``problem_type = "multi_label_classification"``, so that
``transformers.pipeline("text-classification", model=DIR, top_k=None)`` loads
it) plus ``stanceclf.json`` (schema, thresholds, temperatures, splitter
settings, data fingerprint, metrics, library versions) and a generated model
card ``README.md``. Only JSON and safetensors are ever read back.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .documents import unicode_problem
from .errors import ModelDirectoryError, describe_validation_error
from .schema import LabelSchema
from .sentences import SentenceSplitter

MANIFEST_NAME = "stanceclf.json"
FORMAT_NAME = "stanceclf-model"
FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers, stamped into every saved model."""
    import importlib.metadata as md

    versions = {}
    for name in ("stanceclf", "torch", "transformers", "tokenizers", "accelerate", "datasets", "scikit-learn",
                 "syntok"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class ModelManifest(BaseModel):
    """Everything beyond the weights that prediction needs, and where the model came from."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["stanceclf-model"] = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    label_schema: LabelSchema
    thresholds: dict[str, float]
    temperatures: dict[str, float]
    max_length: int = Field(ge=8)
    splitter: SentenceSplitter = SentenceSplitter()
    base_model: str
    data_fingerprint: str | None = None
    metrics: dict = {}
    training: dict = {}
    library_versions: dict[str, str] = Field(default_factory=library_versions)
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _per_label_values(self) -> "ModelManifest":
        labels = set(self.label_schema.label_names)
        for name in ("thresholds", "temperatures"):
            keys = set(getattr(self, name))
            if keys != labels:
                raise ValueError(f"{name} must have exactly the schema's labels {sorted(labels)}, got {sorted(keys)}")
        if not all(math.isfinite(t) and t > 0 for t in self.temperatures.values()):
            raise ValueError(f"temperatures must be positive finite numbers, got {self.temperatures}")
        # A threshold above 1 switches a label off; NaN would silently do the same, so it is refused.
        if not all(math.isfinite(t) and t >= 0 for t in self.thresholds.values()):
            raise ValueError(f"thresholds must be finite and not negative, got {self.thresholds}")
        return self

    @property
    def labels(self) -> list[str]:
        return self.label_schema.label_names

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_NAME).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, directory: Path) -> "ModelManifest":
        path = directory / MANIFEST_NAME
        if not path.exists():
            raise ModelDirectoryError(f"no {MANIFEST_NAME} here: not a stanceclf model directory "
                                      "(a plain transformers folder can be wrapped with 'stanceclf train')",
                                      where=str(directory))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelDirectoryError(f"manifest is not valid UTF-8 JSON: {exc}", where=str(path)) from None
        if not isinstance(data, dict):
            raise ModelDirectoryError(f"manifest must be a JSON object, not {type(data).__name__}", where=str(path))
        if data.get("format") != FORMAT_NAME:
            raise ModelDirectoryError(f"manifest format is {data.get('format')!r}, expected {FORMAT_NAME!r}",
                                      where=str(path))
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ModelDirectoryError(f"manifest format_version must be a positive integer, got {version!r}",
                                      where=str(path))
        if version > FORMAT_VERSION:
            raise ModelDirectoryError(
                f"manifest format_version {version!r} is newer than this stanceclf understands ({FORMAT_VERSION}); "
                "upgrade stanceclf", where=str(path))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ModelDirectoryError(f"invalid manifest: {describe_validation_error(exc)}", where=str(path)) from None


@dataclass
class Prediction:
    """One classified unit (a sentence, or a whole input with ``split_sentences=False``)."""

    text: str
    start: int
    end: int
    labels: list[str]
    scores: dict[str, float]
    truncated: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InferenceStats:
    """Counts since load: units scored, truncated, real and padded tokens (for benchmarks)."""

    units: int = 0
    truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0


class StanceModel:
    """A loaded model: ``classify`` texts, read its ``labels`` and ``thresholds``."""

    def __init__(self, model, tokenizer, manifest: ModelManifest, path: str | Path | None = None, *,
                 encoder=None, backend: str = "torch"):
        self.model = model.eval()
        #: Runs the forward pass instead of ``model`` when set (a fast path, see :mod:`stanceclf.fast_path`).
        self.encoder = encoder
        #: Which forward pass runs: "torch" (fp32), "bf16" or "onnx".
        self.backend = backend
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.path = Path(path) if path is not None else None
        self.stats = InferenceStats()
        # Fast tokenizers mutate their truncation/padding state per call: one caller at a time.
        self._tokenizer_lock = threading.Lock()
        self._stats_lock = threading.Lock()
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

    def __repr__(self) -> str:
        backend = "" if self.backend == "torch" else f", backend={self.backend!r}"
        return f"StanceModel(path={str(self.path)!r}, labels={self.labels}{backend})"

    def _check_head(self) -> None:
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        if [id2label.get(i) for i in range(len(id2label))] != self.labels:
            raise ModelDirectoryError(
                f"config.json id2label {id2label} does not match the manifest's labels {self.labels}",
                where=str(self.path) if self.path else None)
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None and self.max_length > positions:
            raise ModelDirectoryError(f"the manifest's max_length {self.max_length} exceeds the model's "
                                      f"{positions} positions", where=str(self.path) if self.path else None)

    # ---- loading and saving -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, fast: bool | str = False) -> "StanceModel":
        """Load a model directory. ``fast`` picks a faster CPU path: ``True`` (the best for this
        CPU), ``"bf16"`` or ``"onnx"``; see :meth:`accelerated`."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise ModelDirectoryError("model directory not found", where=str(path))
        manifest = ModelManifest.read(path)
        if not (path / "model.safetensors").exists():
            raise ModelDirectoryError("no model.safetensors: only safetensors weights are loaded", where=str(path))
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, trust_remote_code=False, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        loaded = cls(model, tokenizer, manifest, path)
        return loaded.accelerated(fast) if fast else loaded

    def save_pretrained(self, path: str | Path, *, model_card: bool = True) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.config.problem_type = "multi_label_classification"
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        self.manifest.write(path)
        if model_card:
            from .model_card import write_model_card

            write_model_card(path, self.manifest)
        self.path = path
        return path

    def accelerated(self, backend: bool | str = "auto", *, threads: int | None = None) -> "StanceModel":
        """A copy that runs a faster CPU path; each score stays within 0.02 of fp32 (tested).

        ``"bf16"``: bfloat16 matrix products, about 1.5x fp32 on CPUs with native bfloat16;
        scores move by up to about 0.02. ``"onnx"``: ONNX Runtime with fused attention, scores within
        1e-5. ``"auto"`` (or True): bf16 where the CPU has native bfloat16, else onnx.
        See :mod:`stanceclf.fast_path`.
        """
        from .fast_path import Bfloat16Encoder, OnnxEncoder, resolve_backend

        backend = resolve_backend(backend)
        if backend == "bf16":
            encoder = Bfloat16Encoder(self.model)
        elif backend == "onnx":
            encoder = OnnxEncoder(self.model, threads=threads)
        else:
            encoder = None
        return StanceModel(self.model, self.tokenizer, self.manifest, self.path, encoder=encoder, backend=backend)

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

    def predict_logits(self, texts: list[str], *, batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """Raw logits ``(len(texts), n_labels)``, computed in length-sorted, dynamically padded batches."""
        import torch

        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32), []
        ids, truncated = self.tokenize(list(texts))
        logits = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad_id = self.tokenizer.pad_token_id or 0
        padded_tokens = 0
        with torch.inference_mode():
            for begin in range(0, len(order), batch_size):
                batch = order[begin: begin + batch_size]
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
        with self._stats_lock:
            self.stats.units += len(ids)
            self.stats.truncated += sum(truncated)
            self.stats.tokens += sum(len(r) for r in ids)
            self.stats.padded_tokens += padded_tokens
        return logits, truncated

    def predict_proba(self, texts: list[str], *, batch_size: int = 64) -> tuple[np.ndarray, list[bool]]:
        """Calibrated probabilities per label (sigmoid of temperature-scaled logits)."""
        logits, truncated = self.predict_logits(texts, batch_size=batch_size)
        return probabilities(logits, self.temperature_vector), truncated

    @property
    def temperature_vector(self) -> np.ndarray:
        return np.array([self.manifest.temperatures[label] for label in self.labels], dtype=np.float32)

    @property
    def threshold_vector(self) -> np.ndarray:
        return np.array([self.manifest.thresholds[label] for label in self.labels], dtype=np.float32)

    def split(self, text: str):
        return self.manifest.splitter.split(text)

    def classify(self, texts, *, split_sentences: bool = True, batch_size: int = 64):
        """Classify one text (-> list of :class:`Prediction`) or a list of texts (-> one list per text).

        With ``split_sentences`` each text is split into sentences, all
        sentences of all texts are batched together, and offsets point into
        each input text; without it, each text is one unit.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)  # a generator would be used up by the checks below
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"input {position} is {type(text).__name__}, expected str")
            problem = unicode_problem(text)
            if problem:
                raise ValueError(f"input {position} is {problem}")
        units: list[tuple[int, int, int, str]] = []
        for doc_index, text in enumerate(texts):
            if split_sentences:
                units.extend((doc_index, s.start, s.end, s.text) for s in self.split(text))
            elif text.strip():
                units.append((doc_index, 0, len(text), text))
        probs, truncated = self.predict_proba([u[3] for u in units], batch_size=batch_size)
        results: list[list[Prediction]] = [[] for _ in texts]
        for (doc_index, start, end, text), row, cut in zip(units, probs, truncated):
            scores, labels = self.decide(row)
            results[doc_index].append(Prediction(text=text, start=start, end=end, labels=labels, scores=scores,
                                                 truncated=cut))
        return results[0] if single else results

    def decide(self, row) -> tuple[dict[str, float], list[str]]:
        """Reported scores (rounded to 6 places) and the labels whose reported score reaches
        its threshold, so that a user comparing the two always agrees with us."""
        scores = {label: round(float(p), 6) for label, p in zip(self.labels, row)}
        thresholds = self.manifest.thresholds
        return scores, [label for label in self.labels if scores[label] >= thresholds[label]]


def probabilities(logits: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """Sigmoid of temperature-scaled logits, computed stably."""
    scaled = np.asarray(logits, dtype=np.float64) / temperatures
    return (0.5 * (1.0 + np.tanh(0.5 * scaled))).astype(np.float32)


class _quiet_transformers:
    """transformers 5 prints a load report and progress bars on every load; keep the CLI clean."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._verbosity)
        hf_logging.enable_progress_bar()
        return False
