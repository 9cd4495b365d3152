"""The files of a model directory: their names, which ones a directory needs, which one holds its weights.

A plain model directory is a ``save_pretrained`` folder; an adapter directory (see
:mod:`stanceclf.model.adapter`) holds peft's adapter files in place of ``model.safetensors``.
Both also hold the ``stanceclf.json`` manifest (:mod:`stanceclf.model.manifest`) and a model card.

A leaf below every reader and writer of model directories: it imports only :mod:`stanceclf.files`.
"""

from __future__ import annotations

from pathlib import Path

from stanceclf.files import file_sha256

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
#: Every file that prediction reads from a plain model directory besides the manifest, and what it holds:
#: a model directory without one is refused (without tokenizer.json transformers silently falls back to a
#: 5-token vocabulary, every word becomes [UNK] and every score is wrong).
REQUIRED_FILES = {
    CONFIG_NAME: "the architecture and the head's labels",
    WEIGHTS_NAME: "the weights (only safetensors are loaded)",
    TOKENIZER_NAME: "the tokenizer's vocabulary",
    TOKENIZER_CONFIG_NAME: "the tokenizer's settings and special tokens",
}

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
#: What an adapter directory holds in place of ``model.safetensors``.
ADAPTER_FILES = {
    ADAPTER_CONFIG_NAME: "the LoRA adapter's settings",
    ADAPTER_WEIGHTS_NAME: "the LoRA adapter's weights and the trained head (only safetensors are loaded)",
}


def required_files(*, adapter: bool) -> dict[str, str]:
    """The files a model directory must hold besides the manifest, and what each holds: a plain one's
    :data:`REQUIRED_FILES`, or an adapter directory's (its :data:`ADAPTER_FILES` in place of the weights)."""
    if not adapter:
        return REQUIRED_FILES
    return {**{name: why for name, why in REQUIRED_FILES.items() if name != WEIGHTS_NAME}, **ADAPTER_FILES}


def weights_file(directory: str | Path | None) -> Path | None:
    """The file that holds a model directory's own weights (``model.safetensors``, or an adapter
    directory's adapter), if there is one; None for a model never saved."""
    if directory is None:
        return None
    for name in (WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def weights_digest(directory: str | Path | None) -> str | None:
    """The sha256 (hex) of a model directory's weights file; None for a model never saved."""
    weights = weights_file(directory)
    return file_sha256(weights) if weights is not None else None
