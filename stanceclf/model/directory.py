"""Reading and writing model directories.

A model directory is a plain ``save_pretrained`` folder (safetensors weights, tokenizer
files, ``config.json`` with ``id2label`` and ``problem_type = "multi_label_classification"``,
so that ``transformers.pipeline("text-classification", model=DIR, top_k=None)`` loads it)
plus the ``stanceclf.json`` manifest and a generated model card ``README.md``. Only JSON
and safetensors are ever read back; ``trust_remote_code`` stays off.
"""

from __future__ import annotations

import json
from pathlib import Path

from stanceclf.errors import ModelDirectoryError
from stanceclf.model.architectures import architecture_of
from stanceclf.model.manifest import ModelManifest

WEIGHTS_NAME = "model.safetensors"


class quiet_transformers:
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


def load_model_directory(path: str | Path):
    """``(transformers model, tokenizer, manifest)`` from a model directory, checked for consistency."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    manifest = check_model_directory(path)
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=False, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    check_head(model.config, manifest, path)
    return model, tokenizer, manifest


def check_model_directory(path: str | Path) -> ModelManifest:
    """The manifest of a model directory, once its folder, manifest and weights file are there
    (cheap: no weights are read)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirectoryError("model directory not found", where=str(path))
    manifest = ModelManifest.read(path)
    if not (path / WEIGHTS_NAME).exists():
        raise ModelDirectoryError(f"no {WEIGHTS_NAME}: only safetensors weights are loaded", where=str(path))
    return manifest


def check_head(config, manifest: ModelManifest, path: str | Path | None = None) -> None:
    """The classification head must carry the manifest's labels, and max_length fit the positions."""
    where = str(path) if path is not None else None
    id2label = {int(k): v for k, v in config.id2label.items()}
    if [id2label.get(i) for i in range(len(id2label))] != manifest.labels:
        raise ModelDirectoryError(f"config.json id2label {id2label} does not match the manifest's labels "
                                  f"{manifest.labels}", where=where)
    positions = architecture_of(config).usable_positions(config)
    if positions is not None and manifest.max_length > positions:
        raise ModelDirectoryError(f"the manifest's max_length {manifest.max_length} exceeds the model's "
                                  f"{positions} usable positions", where=where)


def weights_digest(directory: str | Path | None) -> str | None:
    """The sha256 (hex) of a model directory's weights file; None for a model never saved."""
    import hashlib

    weights = Path(directory) / WEIGHTS_NAME if directory is not None else None
    if weights is None or not weights.exists():
        return None
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model_directory(model, tokenizer, manifest: ModelManifest, path: str | Path, *,
                         storage_dtype: str = "float32", model_card: bool = True) -> Path:
    """Write a model directory. ``storage_dtype="float16"`` halves the stored weights while the
    config keeps float32 as the run dtype, so every loader (ours and ``pipeline``) computes in float32.
    The caller's model is left in the dtype it had."""
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.problem_type = "multi_label_classification"
    original = next(model.parameters()).dtype
    model.to(torch.float16 if storage_dtype == "float16" else torch.float32)
    try:
        model.save_pretrained(path, safe_serialization=True)
    finally:
        model.to(original)
    _run_dtype_float32(path / "config.json")
    tokenizer.save_pretrained(path)
    manifest.write(path)
    if model_card:
        from stanceclf.model.card import write_model_card

        write_model_card(path, manifest)
    return path


def _run_dtype_float32(config_path: Path) -> None:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def export_model_directory(source: str | Path, out: str | Path) -> Path:
    """Copy a model directory as a plain transformers folder in float32 (plus the manifest and card),
    loading it afresh so that no cached model is touched."""
    model, tokenizer, manifest = load_model_directory(source)
    return save_model_directory(model, tokenizer, manifest, out, storage_dtype="float32")
