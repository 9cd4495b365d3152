"""The ``stanceclf.json`` manifest: everything beyond the weights that prediction needs.

A model directory holds the manifest beside the transformers files; it names the label
schema, thresholds, temperatures, max length, sentence splitter, the context each sentence is
read with, base model, data fingerprint, metrics and the library versions that made the model. It is read strictly:
a bad value is refused with the file named, never guessed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stanceclf.data.context import ContextSettings
from stanceclf.data.schema import LabelSchema
from stanceclf.data.sentences import SentenceSplitter
from stanceclf.errors import ModelDirectoryError, describe_validation_error, load_json_object

MANIFEST_NAME = "stanceclf.json"
FORMAT_NAME = "stanceclf-model"
FORMAT_VERSION = 3
#: The format of a manifest that names no ``stored_weights``: what stanceclf before adapters wrote and reads.
PLAIN_FORMAT_VERSION = 1
#: The format of a manifest with ``stored_weights``, and no context.
ADAPTER_FORMAT_VERSION = 2


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


class StoredWeights(BaseModel):
    """How a model directory stores weights that are not all in its ``model.safetensors``:
    a LoRA adapter over a base (:mod:`stanceclf.model.adapter`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["lora-adapter"] = "lora-adapter"
    #: The base as the recipe named it: ``packaged:<name>``, a folder, or a hub id.
    base: str
    #: sha256 of the base's ``model.safetensors``: loading refuses any other weights.
    base_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelManifest(BaseModel):
    """Everything beyond the weights that prediction needs, and where the model came from."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["stanceclf-model"] = FORMAT_NAME
    format_version: int = PLAIN_FORMAT_VERSION
    label_schema: LabelSchema
    thresholds: dict[str, float]
    temperatures: dict[str, float]
    max_length: int = Field(ge=8)
    splitter: SentenceSplitter = SentenceSplitter()
    #: What each sentence is read with (:mod:`stanceclf.data.context`); a manifest without it: the sentence alone.
    context: ContextSettings = ContextSettings()
    base_model: str
    data_fingerprint: str | None = None
    metrics: dict = {}
    training: dict = {}
    library_versions: dict[str, str] = Field(default_factory=library_versions)
    #: None: every weight is in model.safetensors.
    stored_weights: StoredWeights | None = None
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

    def documents_seen(self) -> dict[str, set[str]] | None:
        """The document ids the model trained on (``"train"``) and tuned its thresholds and temperatures on
        (``"dev"``), as its training recorded them; None if the manifest lists no training documents (a model
        wrapped from elsewhere, or trained before they were recorded)."""
        recorded = self.training.get("documents")
        if not isinstance(recorded, dict) or "train" not in recorded:
            return None
        return {name: set(recorded.get(name, [])) for name in ("train", "dev")}

    def write(self, directory: Path) -> None:
        # A manifest says the oldest format that reads it right: an older stanceclf then refuses what it would
        # misread (an adapter's weights, a model that reads context) instead of predicting without it.
        version = (FORMAT_VERSION if self.context.enabled else ADAPTER_FORMAT_VERSION if self.stored_weights
                   else PLAIN_FORMAT_VERSION)
        data = self.model_copy(update={"format_version": version})
        (directory / MANIFEST_NAME).write_text(data.to_json(indent=2) + "\n", encoding="utf-8")

    def to_json(self, *, indent: int | None = None) -> str:
        """The manifest's JSON; a plain model's leaves out ``stored_weights``, and one without context leaves
        out ``context``, so that it reads (and hashes) exactly as before adapters and contexts existed."""
        left_out = {name for name, absent in (("stored_weights", self.stored_weights is None),
                                               ("context", not self.context.enabled)) if absent}
        return self.model_dump_json(indent=indent, exclude=left_out or None)

    @classmethod
    def read(cls, directory: Path) -> "ModelManifest":
        path = directory / MANIFEST_NAME
        if not path.exists():
            raise ModelDirectoryError(f"no {MANIFEST_NAME} here: not a stanceclf model directory "
                                      "(a plain transformers folder can be wrapped with 'stanceclf train')",
                                      where=str(directory))
        data = load_json_object(path, ModelDirectoryError, "manifest")
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


def manifest_digest(manifest: ModelManifest) -> str:
    """The sha256 (hex) of a manifest's JSON: what tells apart two models that share weights
    (other thresholds or labels), and identifies a model that was never saved."""
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()
