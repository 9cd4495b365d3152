"""Reading and writing model directories.

A model directory is a plain ``save_pretrained`` folder (safetensors weights, tokenizer
files, ``config.json`` with ``id2label`` and ``problem_type = "multi_label_classification"``,
so that ``transformers.pipeline("text-classification", model=DIR, top_k=None)`` loads it)
plus the ``stanceclf.json`` manifest and a generated model card ``README.md`` (the files are named
in :mod:`stanceclf.model.layout`). Only JSON and safetensors are ever read back; ``trust_remote_code``
stays off.

The top of :mod:`stanceclf.model`: it builds on the manifest, the adapter and the native runtime, and
none of them imports it. :mod:`stanceclf.model.native` is imported where a model is built, not here:
it imports torch (0.8 s), and ``import stanceclf`` imports this module.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from stanceclf.errors import ModelDirectoryError, load_json_object
from stanceclf.files import default_file_mode, file_sha256
from stanceclf.model.adapter import LoraAdapter, merged_key, merged_tensors
from stanceclf.model.architectures import architecture_of
from stanceclf.model.card import write_model_card
from stanceclf.model.layout import (ADAPTER_FILES, ADAPTER_WEIGHTS_NAME, CONFIG_NAME, TOKENIZER_CONFIG_NAME,
                                    TOKENIZER_NAME, WEIGHTS_NAME, required_files)
from stanceclf.model.manifest import ModelManifest, StoredWeights
from stanceclf.progress import library_output

if TYPE_CHECKING:
    import transformers

    from stanceclf.model.native import NativeClassifier
    from stanceclf.model.tokenizer import JsonTokenizer

#: Embedding rows past the tokenizer's vocabulary that are taken for padding (some models round the
#: matrix up to a multiple of 64 or 128); a larger gap means the tokenizer belongs to another model.
EMBEDDING_ROUNDING = 128


def load_model_directory(path: str | Path, *, runtime: str = "auto") -> tuple[
        NativeClassifier | transformers.PreTrainedModel, JsonTokenizer | transformers.PreTrainedTokenizerBase,
        ModelManifest]:
    """``(model, tokenizer, manifest)`` from a model directory that is complete and self-consistent,
    else a :class:`~stanceclf.errors.ModelDirectoryError` naming the missing or inconsistent part.
    Whether the head carries the manifest's labels (:func:`check_head`) is checked by whoever wraps the
    model: :class:`~stanceclf.infer.model.StanceModel` checks every model it is given, loaded or not.

    ``runtime="auto"`` runs a BERT- or MPNet-family model in plain torch (:mod:`stanceclf.model.native`,
    without importing transformers); ``"transformers"``, and any other architecture, load through transformers."""
    path = Path(path)
    manifest = check_model_directory(path)
    config = load_json_object(path / CONFIG_NAME, ModelDirectoryError, "model config")
    tokenizer = read_tokenizer(path)
    if manifest.stored_weights is not None:
        return _load_adapter_directory(path, manifest, config, tokenizer, runtime)
    shapes = _weight_shapes(path / WEIGHTS_NAME)
    check_consistency(config, shapes, tokenizer.vocab_size, manifest, path)
    from stanceclf.model.native import native_classifier, read_float32_tensors

    native = native_classifier(config) if runtime == "auto" else None
    if native is not None:
        model = native.from_tensors(config, read_float32_tensors(path / WEIGHTS_NAME), str(path / WEIGHTS_NAME))
    else:
        model, tokenizer = _load_with_transformers(path)
    _check_finite(model, path / WEIGHTS_NAME)
    return model, tokenizer, manifest


def _read_adapter(path: Path, stored: StoredWeights) -> LoraAdapter:
    return LoraAdapter.read(path, stored.base, stored.base_sha256)


def deferred_adapter(path: str | Path, manifest: ModelManifest) -> Callable[[], LoraAdapter] | None:
    """For an adapter directory, a callable that reads its :class:`~stanceclf.model.adapter.LoraAdapter`
    when first asked (to save the model again as an adapter) and returns that same reading to every later
    call; it refuses if the files changed since now. None for a plain directory. Reading the adapter
    imports peft, which loading for prediction does not need."""
    stored = manifest.stored_weights
    if stored is None:
        return None
    path = Path(path)
    loaded = merged_key(path, stored.base_sha256)

    @cache  # one reading for the model and its accelerated copies, whatever is saved where meanwhile
    def read():
        try:
            unchanged = merged_key(path, stored.base_sha256) == loaded
        except OSError as exc:
            raise ModelDirectoryError(f"the adapter's files cannot be read again to save this model ({exc}): "
                                      "it is saved as its adapter, read from where it was loaded",
                                      where=str(path)) from None
        if not unchanged:
            raise ModelDirectoryError("the adapter's files changed since this model was loaded: load it again "
                                      "before saving it", where=str(path))
        return _read_adapter(path, stored)

    return read


def _load_adapter_directory(path: Path, manifest: ModelManifest, config: dict, tokenizer, runtime: str):
    """The base with the directory's adapter merged (see :mod:`stanceclf.model.adapter`)."""
    from stanceclf.model.native import native_classifier

    where = path / ADAPTER_WEIGHTS_NAME
    stored = manifest.stored_weights
    native = native_classifier(config) if runtime == "auto" else None
    if native is not None:
        tensors = merged_tensors(path, stored.base, stored.base_sha256)
        check_consistency(config, {name: list(t.shape) for name, t in tensors.items()}, tokenizer.vocab_size,
                          manifest, path)
        model = native.from_tensors(config, tensors, str(where))
    else:
        from transformers import AutoTokenizer

        model = _read_adapter(path, stored).merged_model(path).eval()
        check_consistency(config, {name: list(t.shape) for name, t in model.state_dict().items()},
                          tokenizer.vocab_size, manifest, path)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    _check_finite(model, where)
    return model, tokenizer, manifest


def read_tokenizer(path: str | Path) -> JsonTokenizer:
    """A model directory's tokenizer, run by ``tokenizers`` (no torch, no transformers)."""
    path = Path(path)
    from stanceclf.model.tokenizer import JsonTokenizer

    try:
        return JsonTokenizer((path / TOKENIZER_NAME).read_text(encoding="utf-8"),
                             (path / TOKENIZER_CONFIG_NAME).read_text(encoding="utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed tokenizer.json
        for name in (TOKENIZER_CONFIG_NAME, TOKENIZER_NAME):  # bad bytes or JSON: named with line and column
            load_json_object(path / name, ModelDirectoryError, "tokenizer")
        raise ModelDirectoryError(f"not a tokenizer the tokenizers library can read: {exc}",
                                  where=str(path / TOKENIZER_NAME)) from None


def _weight_shapes(weights: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from the safetensors header, which also tells a truncated file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise ModelDirectoryError(f"not a readable safetensors file (truncated or corrupt?): {exc}",
                                  where=str(weights)) from None


def check_consistency(config: dict, shapes: dict[str, list[int]], tokenizer_size: int, manifest: ModelManifest,
                      path: Path) -> None:
    """The parts of a model directory must belong together: config.json's vocabulary and labels, the
    embedding matrix and head in the weights, the tokenizer's vocabulary and the number of the manifest's
    labels (their names and the usable length: :func:`check_head`)."""
    weights, tokenizer = path / WEIGHTS_NAME, path / TOKENIZER_NAME
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise ModelDirectoryError("no id2label: not a classification model's config", where=str(path / CONFIG_NAME))
    embedding = next((name for name in shapes if name.endswith("embeddings.word_embeddings.weight")), None)
    if embedding is not None:
        rows = shapes[embedding][0]
        if config.get("vocab_size") != rows:
            raise ModelDirectoryError(f"config.json says vocab_size {config.get('vocab_size')}, but the embedding "
                                      f"matrix {embedding} in {WEIGHTS_NAME} has {rows} rows", where=str(path))
        if not rows - EMBEDDING_ROUNDING <= tokenizer_size <= rows:
            raise ModelDirectoryError(f"the tokenizer has {tokenizer_size} tokens but the embedding matrix in "
                                      f"{WEIGHTS_NAME} has {rows} rows: {TOKENIZER_NAME} belongs to another model",
                                      where=str(tokenizer))
    head = next((name for name in ("classifier.out_proj.weight", "classifier.weight") if name in shapes), None)
    if head is not None and shapes[head][0] != len(manifest.labels):
        raise ModelDirectoryError(f"the classification head {head} has {shapes[head][0]} outputs, but the manifest "
                                  f"has {len(manifest.labels)} labels {manifest.labels}", where=str(weights))


def _load_with_transformers(path: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        with library_output("transformers", "huggingface_hub"):
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, trust_remote_code=False, local_files_only=True, output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelDirectoryError(f"transformers cannot load it: {exc}", where=str(path)) from None
    # transformers fills tensors missing from the file with random values and only logs it.
    missing = sorted(info.get("missing_keys") or []) + [name for name, *_ in info.get("mismatched_keys") or []]
    if missing:
        raise ModelDirectoryError(f"{WEIGHTS_NAME} lacks, or has other shapes for, {len(missing)} tensor(s) the "
                                  f"model needs: {', '.join(missing[:5])}", where=str(path / WEIGHTS_NAME))
    return model, tokenizer


def _check_finite(model, weights: Path) -> None:
    import numpy as np

    # A NaN or infinity anywhere makes the sum non-finite. numpy's single-threaded sum: torch's parallel
    # reductions (and isfinite() over every element) are many times slower on a busy machine.
    bad = [name for name, tensor in model.named_parameters()
           if tensor.is_floating_point() and not np.isfinite(tensor.detach().float().numpy().sum())]
    if bad:
        raise ModelDirectoryError(f"the weights hold NaN or infinite values (corrupt?): {', '.join(bad[:5])}",
                                  where=str(weights))


def check_model_directory(path: str | Path) -> ModelManifest:
    """The manifest of a model directory, once its folder, manifest and every required file are there
    (cheap: nothing but the manifest is read)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirectoryError("model directory not found", where=str(path))
    manifest = ModelManifest.read(path)
    missing = [f"{name} ({why})" for name, why in _required_files(manifest).items() if not (path / name).is_file()]
    if missing:
        raise ModelDirectoryError("incomplete model directory, missing " + "; ".join(missing), where=str(path))
    return manifest


def _required_files(manifest: ModelManifest) -> dict[str, str]:
    return required_files(adapter=manifest.stored_weights is not None)


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


def save_model_directory(model, tokenizer, manifest: ModelManifest, path: str | Path, *,
                         storage_dtype: str = "float32", model_card: bool = True, adapter=None) -> Path:
    """Write a model directory. ``storage_dtype="float16"`` halves the stored weights while the
    config keeps float32 as the run dtype, so every loader (ours and ``pipeline``) computes in float32.
    The caller's model is left in the dtype it had. With ``adapter`` (a
    :class:`~stanceclf.model.adapter.LoraAdapter` of this model) only the adapter is stored, and the
    manifest pins its base."""
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    existing = path / WEIGHTS_NAME
    if adapter is not None and existing.is_file() and file_sha256(existing) == adapter.base_sha256:
        raise ModelDirectoryError("this folder holds the adapter's own base weights; saving the adapter here "
                                  "would delete them: choose another folder", where=str(path))
    # A directory saved over holds no weights of the other form, which would contradict the new ones.
    for stale in ([WEIGHTS_NAME] if adapter is not None else list(ADAPTER_FILES)):
        (path / stale).unlink(missing_ok=True)
    model.config.problem_type = "multi_label_classification"
    before = set(path.iterdir())
    if adapter is not None:
        # to_dict, not save_pretrained: a natively loaded BERT carries a plain config.
        (path / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        with library_output("transformers", "huggingface_hub"):
            tokenizer.save_pretrained(path)
        adapter.save(path, storage_dtype=storage_dtype)
        manifest = manifest.model_copy(update={"stored_weights": StoredWeights(
            base=adapter.base, base_sha256=adapter.base_sha256)})
    else:
        original = next(model.parameters()).dtype
        model.to(torch.float16 if storage_dtype == "float16" else torch.float32)
        try:
            # One shard of a small model: no "Writing model shards" bar.
            with library_output("transformers", "huggingface_hub"):
                model.save_pretrained(path, safe_serialization=True)
                tokenizer.save_pretrained(path)
        finally:
            model.to(original)
        manifest = manifest.model_copy(update={"stored_weights": None})
    _run_dtype_float32(path / CONFIG_NAME)
    manifest.write(path)
    if model_card:
        write_model_card(path, manifest)
    _default_permissions(sorted(set(path.iterdir()) - before | {path / name for name in _required_files(manifest)}))
    return path


def _default_permissions(files: list[Path]) -> None:
    """Give written files the mode a plain ``open()`` would (0644 under the usual umask 022):
    transformers writes some through temporary files, which are created 0600."""
    mode = default_file_mode()
    for file in files:
        if file.is_file():
            os.chmod(file, mode)


def _run_dtype_float32(config_path: Path) -> None:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def export_model_directory(source: str | Path, out: str | Path) -> Path:
    """Copy a model directory as a plain transformers folder in float32 (plus the manifest and card),
    loading it afresh through transformers so that no cached model is touched."""
    model, tokenizer, manifest = load_model_directory(source, runtime="transformers")
    check_head(model.config, manifest, source)
    return save_model_directory(model, tokenizer, manifest, out, storage_dtype="float32")
